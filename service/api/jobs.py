"""Running jobs (``/v1/jobs``): the work of a synchronous route, decoded and checked at submission, run in
the background under ``DIR_JOB_TIMEOUT_S`` instead of the request's deadline, its status and result kept in
the job store (:mod:`service.job_store`).

At most ``DIR_JOB_CONCURRENCY`` jobs of this process run at once; the others wait (``queued``). A running
job writes its progress (tile runs done) to the store every ``DIR_JOB_POLL_S`` seconds and, at the same
moment, looks whether it was cancelled (``DELETE``, possibly on another replica): then its remaining tiles
are dropped, as when a synchronous client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable

from fastapi.responses import JSONResponse

from modelstore.errors import ModelStoreError
from service import admission
from service.api.state import ServiceState
from service.api.work import InferFn, Work
from service.deadline import Deadline
from service.errors import ModelStoreRefused, ServiceError, Unavailable
from service.imaging import DecodedImage
from service.inference import Inference
from service.job_store import JobRecord, JobStore, Reply, now_iso
from service.memory import TRIM_ABOVE_PIXELS, release_memory

log = logging.getLogger("dir.service")

#: ``to_error(exc)``: the JSON error answer of a ``ServiceError``
#: (:func:`service.api.boundary.error_response`).
ErrorResponder = Callable[[ServiceError], JSONResponse]


class JobRunner:
    """Starts jobs in this process and cancels them."""

    def __init__(self, state: ServiceState, store: JobStore, to_error: ErrorResponder) -> None:
        self.state = state
        self.store = store
        self.to_error = to_error
        self.slots = asyncio.Semaphore(state.settings.job_concurrency)
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, work: Work, image: DecodedImage, decode_s: float) -> JobRecord:
        """Store a new job for ``work`` on the decoded ``image`` and start it; ``Unavailable`` (503) when the
        store cannot hold it."""
        cost = admission.request_cost(work.state.restorer, image.width, image.height, work.mode)
        record = JobRecord(
            id=uuid.uuid4().hex,
            task=work.task,
            image_size=f"{image.width}x{image.height}",
            tiles_total=cost.tiles * cost.passes,
        )
        await self.store.create(record, image.pixels.nbytes + work.result_bytes(image.width, image.height))
        task = asyncio.create_task(
            self._run(record, work, image, decode_s, cost.pixels), name=f"job-{record.id}"
        )
        self.tasks[record.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(record.id, None))
        return record

    def cancel(self, job_id: str) -> None:
        """Stop the job's task in this process, when it runs here."""
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Cancel every job of this process (shutdown) and wait for their clean-up."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, record: JobRecord, work: Work, image: DecodedImage, decode_s: float, pixels: int
    ) -> None:
        submitted = time.perf_counter()
        try:
            async with self.slots:
                record.state, record.started = "running", now_iso()
                await self.store.update(record)
                waited = time.perf_counter() - submitted
                reply = await self._produce(record, work, image, (decode_s, waited), pixels)
                record.state = "done"
        except asyncio.CancelledError:  # DELETE (the record says so already) or shutdown
            return
        except Exception as exc:
            reply = self._error_reply(record, exc)
        record.finished = now_iso()
        del image
        try:
            await self.store.finish(record, reply)
        except Unavailable as exc:
            log.error("job %s ended (%s) but could not be stored: %s", record.id, record.state, exc.message)
        if pixels >= TRIM_ABOVE_PIXELS:
            await asyncio.to_thread(release_memory, work.state.shrink_arenas)

    async def _produce(
        self, record: JobRecord, work: Work, image: DecodedImage, before: tuple[float, float], pixels: int
    ) -> Reply:
        """Run the work, writing progress and watching for a cancellation every ``DIR_JOB_POLL_S``; sets the
        record's timings (``before``: seconds decoding at submission and queued before it started; ``pixels``:
        the admitted cost)."""
        decode_s, waited = before
        settings = self.state.settings
        deadline = Deadline.after(settings.job_timeout_s, rule="DIR_JOB_TIMEOUT_S")
        done: list[Inference] = []

        def progress(tiles: int, total: int) -> None:
            record.tiles_done, record.tiles_total = tiles, total

        async def run(image: DecodedImage, outputs: list[str], mode: str) -> Inference:
            result = await work.state.restorer.infer(image, outputs, deadline, mode, progress)
            await work.state.after_model(pixels)
            done.append(result)
            return result

        started = time.perf_counter()
        infer: InferFn = run
        task = asyncio.ensure_future(work.produce(image, infer, decode_s, started))
        try:
            reported = -1
            while not task.done():
                await asyncio.wait({task}, timeout=settings.job_poll_s)
                if task.done():
                    break
                if await self.store.cancel_requested(record.id):  # DELETE on another replica
                    record.state, record.finished = "cancelled", now_iso()
                    await self.store.finish(record, None)
                    raise asyncio.CancelledError
                if record.tiles_done != reported:
                    reported = record.tiles_done
                    await self.store.update(record)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        reply = task.result()
        inference = done[0]
        record.timings = {
            "decode_s": decode_s,
            "queue_s": waited + inference.queue_wait_s,
            "compute_s": inference.compute_s,
            "encode_s": max(0.0, time.perf_counter() - started - inference.total_s),
        }
        return reply

    def _error_reply(self, record: JobRecord, exc: Exception) -> Reply:
        """A failed job: its record's error and the error answer the synchronous route would have sent."""
        if isinstance(exc, ModelStoreError):
            exc = ModelStoreRefused.from_store(exc)
        if not isinstance(exc, ServiceError):
            log.exception("job %s failed", record.id, exc_info=exc)
            exc = ServiceError("internal server error; see the server log")
        response = self.to_error(exc)
        record.state = "failed"
        body = json.loads(bytes(response.body))
        record.error = {"code": body["error"], "message": body["message"]}
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        return Reply(bytes(response.body), "application/json", headers, exc.status)
