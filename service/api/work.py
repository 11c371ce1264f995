"""What the image routes and jobs share: reading and decoding the body under admission, inference that stops
when the client leaves, the timing headers, and :class:`Work` (one request's validated work, which the
synchronous route runs with :func:`answer` and a job with :mod:`service.api.jobs`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from service import admission
from service.api.state import ServiceState
from service.deadline import Deadline
from service.errors import ClientClosed
from service.http import read_image_body
from service.imaging import DecodedImage, decode_image
from service.inference import Inference
from service.job_store import Reply
from service.memory import COST_KEY, note_cost

#: ``infer(image, outputs, mode)``: the image through the restorer (stopped when the client leaves, for the
#: synchronous routes; with progress, for jobs).
InferFn = Callable[[DecodedImage, list[str], str], Awaitable[Inference]]
#: ``produce(image, infer, decode_s, started)``: the answer of a decoded image (``started``: perf_counter
#: when the work began, for the timing headers).
Produce = Callable[[DecodedImage, InferFn, float, float], Awaitable[Reply]]


@dataclass(frozen=True)
class Work:
    """One request's work, its parameters checked: ``state`` (of the served entry ``?model=`` picked),
    ``task`` (restore, represent, detect), the restore ``mode`` admission costs, ``json_outputs`` of a JSON
    representation (admission checks their size), ``produce`` (the answer), and
    ``result_bytes(width, height)``: a bound on the answer's size (the job store reserves it)."""

    state: ServiceState
    task: str
    mode: str
    json_outputs: list[str] | None
    produce: Produce
    result_bytes: Callable[[int, int], int]


def reply_response(reply: Reply) -> Response:
    """The HTTP response of ``reply``."""
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


def timing_headers(
    state: ServiceState, decode_s: float, queue_s: float, compute_s: float, total_s: float
) -> dict[str, str]:
    """``X-Model``, ``X-Model-Version`` and ``Server-Timing`` (decode, queue, compute, total in ms)."""
    return {
        "X-Model": state.model.ref,
        "X-Model-Version": state.model.entry.manifest.version,
        "Server-Timing": (
            f"decode;dur={decode_s * 1000:.1f}, queue;dur={queue_s * 1000:.1f}, "
            f"compute;dur={compute_s * 1000:.1f}, total;dur={total_s * 1000:.1f}"
        ),
    }


async def decode(
    request: Request,
    state: ServiceState,
    deadline: Deadline,
    mode: str,
    json_outputs: list[str] | None = None,
    scale: bool = True,
) -> tuple[DecodedImage, float]:
    """Read and decode the request image within ``deadline``; admission by cost (:mod:`service.admission`)
    for a request in restore ``mode`` runs on its header first, the admitted cost is noted for
    :mod:`service.memory` and (``scale``: synchronous requests) extends the deadline by it. Before the
    body is read, a queue that nothing would compute (Redis: no live worker) refuses the request
    (``Unavailable``)."""
    settings = state.settings
    await state.queue.check_workers()
    reading = read_image_body(request, settings.max_body_bytes, settings.body_timeout_s)
    data = await deadline.run(reading, "reading the body")
    started = time.perf_counter()

    def admit(width: int, height: int) -> None:
        cost = admission.admit(state.restorer, settings, width, height, mode, json_outputs)
        note_cost(request.scope, cost.pixels)
        if scale:
            state.scale_deadline(deadline, cost.pixels)

    decoding = asyncio.to_thread(decode_image, data, settings.max_pixels, admit)
    image = await deadline.run(decoding, "decoding")
    return image, time.perf_counter() - started


async def answer(request: Request, work: Work, started: float) -> Response:
    """The synchronous route: decode the body and produce the answer within the request's deadline,
    dropping the remaining tiles when the client leaves."""
    state = work.state
    deadline = state.deadline(started)
    image, decode_s = await decode(request, state, deadline, work.mode, work.json_outputs)

    async def run(image: DecodedImage, outputs: list[str], mode: str) -> Inference:
        result = await infer(request, state, image, outputs, deadline, mode)
        await state.after_model(request.scope.get("state", {}).get(COST_KEY, 0))
        return result

    return reply_response(await work.produce(image, run, decode_s, started))


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (call after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def infer(
    request: Request,
    state: ServiceState,
    image: DecodedImage,
    outputs: list[str],
    deadline: Deadline,
    mode: str = "full",
) -> Inference:
    """``Restorer.infer`` cancelled as soon as the client disconnects: its waiting tiles are dropped (embedded
    queue) or its jobs cancelled (Redis), so a departed client's work does not hold the model."""
    work = asyncio.ensure_future(state.restorer.infer(image, outputs, deadline, mode))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            # Cancel it and let its clean-up (tiles dropped, Redis jobs cancelled) finish: asyncio.wait does
            # not pass on a cancellation of this task (anyio cancels it at every await), so the work is
            # cancelled once and its clean-up is not cut short.
            work.cancel()
            await asyncio.wait({work})
    if work.cancelled():
        raise ClientClosed("the client disconnected before the response; its remaining tiles were dropped")
    return work.result()
