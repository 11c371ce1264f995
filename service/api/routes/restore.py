"""``POST /v1/restore``: a camera image in, the restored image out (PNG or JPEG)."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY, MODE_HELP
from service.api.work import decode, infer, timing_headers
from service.http import image_format
from service.imaging import OUTPUT_MEDIA, encode_image
from service.schemas import ErrorBody

router = APIRouter(tags=["models"], dependencies=AUTH)


@router.post(
    "/v1/restore",
    summary="Restore a camera image (PNG, JPEG or WebP in; PNG or JPEG out)",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}},
        406: {"model": ErrorBody},
        **ERRORS,
    },
)
async def restore(
    request: Request,
    state: StateDep,
    format: Literal["png", "jpeg", "jpg"] | None = Query(None, description="output format; overrides Accept"),
    quality: int = Query(95, ge=1, le=100, description="JPEG quality"),
    mode: Literal["full", "denoise"] | None = Query(None, description=MODE_HELP),
) -> Response:
    started = time.perf_counter()
    fmt = image_format(format, request.headers.get("accept", ""))
    run_mode = mode or state.restorer.default_mode
    state.restorer.check_mode(run_mode)
    deadline = state.deadline(started)
    image, decode_s = await decode(request, state, deadline, run_mode)
    result = await infer(request, state, image, ["restored"], deadline, run_mode)
    body = await asyncio.to_thread(encode_image, result.restored_hwc(), fmt, quality)
    headers = timing_headers(
        state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
    )
    headers["X-Tiles"] = str(result.tiles)
    headers["X-Image-Size"] = f"{image.width}x{image.height}"
    headers["X-Restore-Mode"] = run_mode
    return Response(body, media_type=OUTPUT_MEDIA[fmt], headers=headers)
