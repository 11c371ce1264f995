"""``POST /v1/detect``: COCO detections on the DiR-restored image (and on the input, to compare)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from modelstore import detector as detection
from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY, MODE_HELP, MODEL_HELP
from service.api.state import ServiceState
from service.api.work import InferFn, Work, answer
from service.errors import Unavailable
from service.imaging import DecodedImage, to_uint8
from service.job_store import Reply
from service.schemas import DetectionOut, DetectResponse

router = APIRouter(tags=["models"], dependencies=AUTH)


def _png_b64(pixels_u8: np.ndarray) -> str:
    """Base64 of the PNG of ``pixels_u8`` (H, W, 3) uint8 sRGB."""
    buffer = io.BytesIO()
    Image.fromarray(pixels_u8).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class DetectQuery:
    """The query of ``/v1/detect`` (and ``/v1/jobs/detect``)."""

    compare: bool = Query(False, description="also detect on the unrestored input")
    annotate: bool = Query(False, description="include a PNG of the restored image with boxes drawn")
    conf: float | None = Query(None, ge=0.0, le=1.0, description="score threshold (default: the manifest's)")
    iou: float | None = Query(None, ge=0.0, le=1.0, description="NMS IoU (default: the manifest's)")
    mode: Literal["full", "denoise"] | None = Query(None, description="restore mode: " + MODE_HELP)
    model: str | None = Query(None, description=MODEL_HELP)


DetectQueryDep = Annotated[DetectQuery, Depends()]


def _aligned_detector_ref(state: ServiceState) -> str | None:
    """The detector entry (``name/version``) a task-aligned entry was trained with, else None."""
    recorded = str((state.aligned_for or {}).get("detector_entry") or "")
    return recorded.replace("@", "/", 1) or None


async def detect_work(state: ServiceState, query: DetectQuery) -> Work:
    """Check that a detector is installed (503) and the mode (422) -> the work: a ``DetectResponse``.

    ``state`` is the served entry ``?model=`` picked; a task-aligned one (default mode ``full``) detects with
    the detector it was aligned for when that is installed, else with the service's (``aligned_detector``
    and ``X-Detector`` say which)."""
    run_mode = query.mode or state.restorer.default_mode
    detector = await state.task_detector()
    if detector is None:
        raise Unavailable((state.base or state).detector_error)
    state.restorer.check_mode(run_mode)
    detector_ref = f"{detector.manifest.name}/{detector.manifest.version}"

    async def produce(image: DecodedImage, infer: InferFn, decode_s: float, started: float) -> Reply:
        result = await infer(image, ["restored"], run_mode)
        restored = to_uint8(result.take_restored_hwc())
        detect_started = time.perf_counter()
        found = await asyncio.to_thread(detector.detect, restored, query.conf, query.iou)
        baseline = (
            await asyncio.to_thread(detector.detect, image.as_uint8(), query.conf, query.iou)
            if query.compare
            else None
        )
        detect_s = time.perf_counter() - detect_started
        annotated = _png_b64(detection.draw_detections(restored, found)) if query.annotate else None
        body = DetectResponse(
            model=state.model.ref,
            restore_mode=run_mode,
            detector=detector_ref,
            aligned_detector=_aligned_detector_ref(state),
            width=image.width,
            height=image.height,
            detections=[DetectionOut(**d.to_dict()) for d in found],
            input_detections=[DetectionOut(**d.to_dict()) for d in baseline]
            if baseline is not None
            else None,
            annotated_image=annotated,
            timings_ms={
                "decode": decode_s * 1000,
                "queue": result.queue_wait_s * 1000,
                "compute": result.compute_s * 1000,
                "detect": detect_s * 1000,
                "total": (time.perf_counter() - started) * 1000,
            },
        )
        headers = {
            "X-Model": state.model.ref,
            "X-Model-Version": state.model.entry.manifest.version,
            "X-Detector": detector_ref,
        }
        return Reply(bytes(JSONResponse(body.model_dump()).body), "application/json", headers)

    def result_bytes(width: int, height: int) -> int:
        return (4 * width * height if query.annotate else 0) + (1 << 20)  # base64 of a PNG of 3 bytes/pixel

    return Work(state, "detect", run_mode, None, produce, result_bytes)


@router.post(
    "/v1/detect",
    summary="COCO detections on the DiR-restored image",
    openapi_extra=IMAGE_BODY,
    response_model=DetectResponse,
    responses=ERRORS,
)
async def detect(request: Request, state: StateDep, query: DetectQueryDep) -> Response:
    started = time.perf_counter()
    return await answer(request, await detect_work(state.select(query.model), query), started)
