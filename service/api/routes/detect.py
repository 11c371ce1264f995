"""``POST /v1/detect``: COCO detections on the DiR-restored image (and on the input, to compare)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from PIL import Image

from modelstore import detector as detection
from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY, MODE_HELP
from service.api.work import decode, infer
from service.errors import Unavailable
from service.imaging import to_uint8
from service.schemas import DetectionOut, DetectResponse

router = APIRouter(tags=["models"], dependencies=AUTH)


def _png_b64(pixels_u8: np.ndarray) -> str:
    """Base64 of the PNG of ``pixels_u8`` (H, W, 3) uint8 sRGB."""
    buffer = io.BytesIO()
    Image.fromarray(pixels_u8).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


@router.post(
    "/v1/detect",
    summary="COCO detections on the DiR-restored image",
    openapi_extra=IMAGE_BODY,
    response_model=DetectResponse,
    responses=ERRORS,
)
async def detect(
    request: Request,
    state: StateDep,
    compare: bool = Query(False, description="also detect on the unrestored input"),
    annotate: bool = Query(False, description="include a PNG of the restored image with boxes drawn"),
    conf: float | None = Query(None, ge=0.0, le=1.0, description="score threshold (default: the manifest's)"),
    iou: float | None = Query(None, ge=0.0, le=1.0, description="NMS IoU (default: the manifest's)"),
    mode: Literal["full", "denoise"] | None = Query(None, description="restore mode: " + MODE_HELP),
) -> DetectResponse:
    started = time.perf_counter()
    run_mode = mode or state.restorer.default_mode
    detector = await state.current_detector()
    if detector is None:
        raise Unavailable(state.detector_error)
    state.restorer.check_mode(run_mode)
    deadline = state.deadline(started)
    image, decode_s = await decode(request, state, deadline, run_mode)
    result = await infer(request, state, image, ["restored"], deadline, run_mode)
    restored = to_uint8(result.restored_hwc())
    detect_started = time.perf_counter()
    found = await asyncio.to_thread(detector.detect, restored, conf, iou)
    baseline = await asyncio.to_thread(detector.detect, image.as_uint8(), conf, iou) if compare else None
    detect_s = time.perf_counter() - detect_started
    annotated = _png_b64(detection.draw_detections(restored, found)) if annotate else None
    return DetectResponse(
        model=state.model.ref,
        restore_mode=run_mode,
        detector=f"{detector.manifest.name}/{detector.manifest.version}",
        width=image.width,
        height=image.height,
        detections=[DetectionOut(**d.to_dict()) for d in found],
        input_detections=[DetectionOut(**d.to_dict()) for d in baseline] if baseline is not None else None,
        annotated_image=annotated,
        timings_ms={
            "decode": decode_s * 1000,
            "queue": result.queue_wait_s * 1000,
            "compute": result.compute_s * 1000,
            "detect": detect_s * 1000,
            "total": (time.perf_counter() - started) * 1000,
        },
    )
