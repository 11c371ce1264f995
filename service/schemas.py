"""JSON bodies of the API (they define openapi.yaml's schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable ``error`` code and a human message naming the offending value."""

    error: str = Field(description="bad_input, unsupported_media_type, too_large, queue_full, ...")
    message: str


class ArrayPayload(BaseModel):
    """One array in the JSON variant of /v1/represent: little-endian C-order bytes, base64."""

    shape: list[int] = Field(description="(C, ceil(H/s), ceil(W/s))")
    dtype: str
    scale: int = Field(description="downscale factor s relative to the input image")
    data: str = Field(description="base64 of the raw little-endian bytes")


class RepresentJson(BaseModel):
    """JSON variant of /v1/represent."""

    model: str
    width: int
    height: int
    arrays: dict[str, ArrayPayload]


class DetectionOut(BaseModel):
    """One detection; ``box`` is [x1, y1, x2, y2] in pixels of the (EXIF-oriented) input image."""

    class_id: int
    class_name: str
    score: float
    box: list[float]


class DetectResponse(BaseModel):
    """Detections on the DiR-restored image (and, with ``compare=true``, on the unrestored input)."""

    model: str = Field(description="restoration model name/version")
    restore_mode: str = Field(description="the restore mode the detections ran on: 'full' or 'denoise'")
    detector: str = Field(description="the detector that ran (name/version)")
    aligned_detector: str | None = Field(
        None,
        description="for a task-aligned restoration entry: the detector entry its A was trained with "
        "(name/version); it runs when installed, else the service's detector does (then 'detector' differs)",
    )
    width: int
    height: int
    detections: list[DetectionOut]
    input_detections: list[DetectionOut] | None = Field(None, description="with compare=true: on the input")
    annotated_image: str | None = Field(None, description="with annotate=true: base64 PNG with boxes drawn")
    timings_ms: dict[str, float]


class ModelInfo(BaseModel):
    """One model_store entry."""

    name: str
    version: str
    task: str
    loaded: bool
    description: str
    tile: dict[str, int] | None
    outputs: list[str]
    metrics: dict[str, Any]


class ServedModel(BaseModel):
    """One restoration entry this service serves (``?model=`` picks it)."""

    model: str = Field(description="name/version; the value of ?model= that picks it")
    default: bool = Field(description="the entry requests without ?model= run (DIR_RESTORE_MODEL)")
    precision: str = Field(description="'fp32' or 'fp16' (DIR_PRECISION)")
    modes: list[str] = Field(description="restore modes it offers")
    default_mode: str = Field(description="the mode of requests that name none")
    aligned_for: dict[str, Any] | None = Field(
        None, description="its manifest's extra.aligned_for (task, detector, ...) for a task-aligned entry"
    )
    detector: str | None = Field(
        None,
        description="the detector /v1/detect?model= runs on it (name/version; for a task-aligned entry the "
        "one it was aligned for when installed); null when none is installed",
    )


class ModelsResponse(BaseModel):
    """The entries under the model store and which are serving."""

    restore: str | None
    restore_precision: str = Field(
        description="graph the restoration model runs in this process: 'fp32' or 'fp16' (DIR_PRECISION)"
    )
    restore_modes: list[str] = Field(
        description="values of /v1/restore's mode the restoration model offers: 'full', and 'denoise' "
        "when its entry has the denoise graph"
    )
    default_restore_mode: str = Field(
        description="the mode of /v1/restore and /v1/detect requests that name none (DIR_RESTORE_MODE)"
    )
    restore_tiles: list[int] = Field(
        description="tile sides (px) the restoration model runs in; each image gets the one that computes "
        "the fewest pixels (DIR_TILE_SIZE, DIR_TILE_SIZES)"
    )
    restore_tile_overlap: int = Field(description="overlap (px) of neighbouring tiles (DIR_TILE_OVERLAP)")
    detect: str | None
    served: list[ServedModel] = Field(
        description="every served restoration entry: the default (DIR_RESTORE_MODEL) first, then "
        "DIR_SERVE_MODELS"
    )
    models: list[ModelInfo]


class ReadyResponse(BaseModel):
    """Readiness: models loaded and queue reachable."""

    ready: bool
    checks: dict[str, str]


class JobError(BaseModel):
    """Why a job failed: the error code and message its synchronous route would have answered."""

    code: str
    message: str


class JobTimings(BaseModel):
    """Seconds a finished job spent decoding (at submission), queued (before it ran, plus its tiles' longest
    queue wait), in model calls and producing its answer after the model (stitching, encoding)."""

    decode_s: float
    queue_s: float
    compute_s: float
    encode_s: float


class JobStatus(BaseModel):
    """``GET /v1/jobs/{id}``: a job's state and progress (tile runs over all passes of its restore mode)."""

    id: str
    task: Literal["restore", "represent", "detect"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    tiles_done: int
    tiles_total: int
    image_size: str = Field(description="WxH of the (EXIF-oriented) input image")
    created: str = Field(description="ISO 8601 UTC")
    started: str | None
    finished: str | None
    expires: str | None = Field(description="when the job and its result are forgotten (DIR_JOB_TTL_S)")
    timings: JobTimings | None
    error: JobError | None
    result: str | None = Field(description="/v1/jobs/{id}/result once the job is done")
