"""``POST /v1/restore``: a camera image in, the restored image out (PNG or JPEG)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY, MODE_HELP, MODEL_HELP
from service.api.state import ServiceState
from service.api.work import InferFn, Work, answer, timing_headers
from service.http import image_format
from service.imaging import OUTPUT_MEDIA, DecodedImage, encode_image
from service.job_store import Reply
from service.schemas import ErrorBody

router = APIRouter(tags=["models"], dependencies=AUTH)

RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}}},
    406: {"model": ErrorBody},
    **ERRORS,
}


@dataclass
class RestoreQuery:
    """The query of ``/v1/restore`` (and ``/v1/jobs/restore``)."""

    format: Literal["png", "jpeg", "jpg"] | None = Query(None, description="output format; overrides Accept")
    quality: int = Query(95, ge=1, le=100, description="JPEG quality")
    mode: Literal["full", "denoise"] | None = Query(None, description=MODE_HELP)
    model: str | None = Query(None, description=MODEL_HELP)


RestoreQueryDep = Annotated[RestoreQuery, Depends()]


def restore_work(request: Request, state: ServiceState, query: RestoreQuery) -> Work:
    """Check the query (406 for an output format it cannot give, 422 for a mode the model of ``state``, the
    served entry ``?model=`` picked, lacks) -> the
    work: the restored image encoded as PNG or JPEG, with ``X-Tiles``, ``X-Image-Size`` and
    ``X-Restore-Mode``."""
    fmt = image_format(query.format, request.headers.get("accept", ""))
    run_mode = query.mode or state.restorer.default_mode
    state.restorer.check_mode(run_mode)

    async def produce(image: DecodedImage, infer: InferFn, decode_s: float, started: float) -> Reply:
        result = await infer(image, ["restored"], run_mode)
        body = await asyncio.to_thread(encode_image, result.take_restored_hwc(), fmt, query.quality)
        headers = timing_headers(
            state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
        )
        headers["X-Tiles"] = str(result.tiles)
        headers["X-Image-Size"] = f"{image.width}x{image.height}"
        headers["X-Restore-Mode"] = run_mode
        return Reply(body, OUTPUT_MEDIA[fmt], headers)

    def result_bytes(width: int, height: int) -> int:
        return 3 * width * height + (1 << 20)  # PNG at compress level 1 stays within raw size + headers

    return Work(state, "restore", run_mode, None, produce, result_bytes)


@router.post(
    "/v1/restore",
    summary="Restore a camera image (PNG, JPEG or WebP in; PNG or JPEG out)",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses=RESPONSES,
)
async def restore(request: Request, state: StateDep, query: RestoreQueryDep) -> Response:
    started = time.perf_counter()
    return await answer(request, restore_work(request, state.select(query.model), query), started)
