"""The FastAPI application: ``create_app(settings)`` builds it; the lifespan loads models, queue and metrics.

Routes stay thin: read input, call ``Restorer``/the detector, encode. Every ``ServiceError`` is mapped to its
status code with a JSON ``ErrorBody`` at one boundary (``_service_error``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelstore import detector as detection
from service import admission
from service.batching import BatchPolicy
from service.deadline import Deadline
from service.embedded import EmbeddedQueue
from service.errors import (
    BadInput,
    ClientClosed,
    InferenceError,
    ModelStoreError,
    ServiceError,
    Unavailable,
)
from service.http import (
    b64_array,
    check_api_key,
    has_api_key,
    image_format,
    npy_bytes,
    parse_outputs,
    read_image_body,
    safetensors_bytes,
)
from service.imaging import OUTPUT_MEDIA, DecodedImage, decode_image, encode_image, to_uint8
from service.memory import ReleaseMemory, note_cost
from service.metrics import Metrics
from service.pipeline import Inference, Restorer
from service.queue import TileQueue
from service.redact import Redactor, install_log_redaction
from service.redis_queue import RedisQueue
from service.schemas import (
    ArrayPayload,
    DetectionOut,
    DetectResponse,
    ErrorBody,
    ModelInfo,
    ModelsResponse,
    ReadyResponse,
    RepresentJson,
)
from service.settings import Settings
from service.store import RestoreModel, list_entries, resolve_entry, tile_geometry

log = logging.getLogger("dir.service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_VERSION = "1.0.0"
NO_DETECTOR = (
    "no detector installed; run `dir-models add-detector yolo-fastestv2 PATH/TO/weights.pth` "
    "(or add a YOLOv5/YOLOv8 ONNX export) to create a task=detect entry under the model store"
)

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or unknown API key (when DIR_API_KEYS is set); WWW-Authenticate: Bearer",
        408: "the body did not arrive within DIR_BODY_TIMEOUT_S",
        413: "body, pixel count, request cost or JSON output over its limit",
        415: "not a PNG, JPEG or WebP image",
        422: "truncated image, image side or aspect ratio out of bounds, or bad parameter",
        429: "queue full (Retry-After)",
        503: "model or queue unavailable (Retry-After)",
        504: "deadline passed",
    }.items()
}


@dataclass
class ServiceState:
    """What the lifespan builds and the routes use."""

    settings: Settings
    metrics: Metrics
    model: RestoreModel
    queue: TileQueue
    restorer: Restorer
    detector: detection.Detector | None
    detector_error: str
    detector_scanned: float = field(default_factory=time.monotonic)
    detector_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def current_detector(self) -> detection.Detector | None:
        """The loaded detector. While none is, the store is searched again (at most every
        ``DIR_DETECTOR_RESCAN_S``), so a detector installed while the server runs serves without a restart."""
        if self.detector is None and self._rescan_due():
            async with self.detector_lock:
                if self.detector is None and self._rescan_due():
                    found = await asyncio.to_thread(_load_detector, self.settings)
                    self.detector, self.detector_error = found
                    self.detector_scanned = time.monotonic()
                    if self.detector is not None:
                        log.info("detector %s found in the model store; serving it", self.detector.entry_dir)
        return self.detector

    def _rescan_due(self) -> bool:
        return time.monotonic() - self.detector_scanned >= self.settings.detector_rescan_s

    def deadline(self, started: float) -> Deadline:
        """The deadline of a request that arrived at ``started`` (perf_counter): ``DIR_REQUEST_TIMEOUT_S``
        later. It covers reading the body, decoding, tiling, both passes and stitching."""
        return Deadline.after(self.settings.request_timeout_s, time.perf_counter() - started)


def _load_detector(settings: Settings) -> tuple[detection.Detector | None, str]:
    name, _, version = settings.detect_model.partition("/")
    path = (
        settings.model_store / name / version
        if version
        else detection.find_detector(settings.model_store, name or None)
    )
    if path is None or not path.is_dir():
        return None, NO_DETECTOR
    try:
        return detection.load_detector(path, settings.provider_list, settings.threads, settings.pins), ""
    except ModelStoreError as exc:
        log.error("detector entry %s refused: %s", path, exc.message)
        return None, f"detector entry {path} could not be loaded: {exc.message}"


async def build_state(settings: Settings, metrics: Metrics) -> ServiceState:
    """Load and verify the restoration entry, build the queue, load the detector when one is installed.

    Raises ``ModelStoreError`` (missing entry, sha256 mismatch, bad graph): the service refuses to start.
    """
    entry = resolve_entry(settings.model_store, settings.restore_model, "restore")
    model = await asyncio.to_thread(RestoreModel.from_settings, entry, settings, not settings.uses_redis)
    policy = BatchPolicy(settings.max_batch, settings.max_queue_delay_ms / 1000.0, settings.queue_bound)
    queue: TileQueue
    if settings.uses_redis:
        queue = RedisQueue(
            settings.queue,
            model.ref,
            policy,
            settings.stream_prefix,
            graphs=model.graphs,
            priority_tiles=settings.priority_tiles,
            on_live=metrics.live_workers.labels(model.ref).set,
        )
    else:
        queue = EmbeddedQueue(model.ref, model.run, policy, metrics)
    _, tiles, overlap = tile_geometry(model.entry, settings)
    try:
        restorer = Restorer(model, queue, tiles, overlap)
    except BadInput as exc:
        raise ModelStoreError(
            f"DIR_TILE_SIZE / DIR_TILE_SIZES / DIR_TILE_OVERLAP do not fit {model.ref}: {exc.message}"
        ) from exc
    try:
        restorer.default_mode = restorer.resolve_mode(settings.restore_mode)
    except BadInput as exc:
        raise ModelStoreError(f"DIR_RESTORE_MODE={settings.restore_mode}: {exc.message}") from exc
    if not settings.uses_redis and settings.warms_up(model.on_gpu):
        try:
            seconds = await asyncio.to_thread(model.warm_up, tiles)
        except InferenceError as exc:
            raise ModelStoreError(f"{model.ref} failed its start-up run: {exc.message}") from exc
        log.info(
            "warmed up %s: %d graph(s) x tiles %s px in %.1f s", model.ref, len(model.graphs), tiles, seconds
        )
    await queue.start()
    detector, detector_error = await asyncio.to_thread(_load_detector, settings)
    log.info(
        "serving %s %s (%s, tiles %s px overlapping by %d, queue %s%s)",
        model.ref,
        model.precision,
        "two-pass" if model.guide else "single-pass",
        " or ".join(map(str, tiles)),
        overlap,
        settings.queue.split("@")[-1],
        ""
        if settings.uses_redis
        else f", {model.parallel} parts x {settings.run_threads(model.parallel)} threads",
    )
    return ServiceState(settings, metrics, model, queue, restorer, detector, detector_error)


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def _require_key(request: Request) -> None:
    """Route dependency: bearer API key check, run before any parameter is validated."""
    check_api_key(request, _state(request).settings)


async def _require_ops_key(request: Request) -> None:
    """Route dependency of /metrics: the API key check unless ``DIR_OPS_OPEN``."""
    settings: Settings = request.app.state.settings
    if not settings.ops_open:
        check_api_key(request, settings)


MODE_HELP = (
    "full: DiR restoration, which also corrects the ISP's colour and tone errors (exposure, white balance, "
    "gamma); denoise: removes noise and compression artefacts but keeps the camera's colour and tone (for "
    "correctly tuned cameras). Without it: the server's default (DIR_RESTORE_MODE; GET /v1/models lists "
    "the modes the loaded model offers and the default)"
)
AUTH = [Depends(_require_key)]
OPS_AUTH = [Depends(_require_ops_key)]


def _timing_headers(
    state: ServiceState, decode_s: float, queue_s: float, compute_s: float, total_s: float
) -> dict[str, str]:
    return {
        "X-Model": state.model.ref,
        "X-Model-Version": state.model.entry.manifest.version,
        "Server-Timing": (
            f"decode;dur={decode_s * 1000:.1f}, queue;dur={queue_s * 1000:.1f}, "
            f"compute;dur={compute_s * 1000:.1f}, total;dur={total_s * 1000:.1f}"
        ),
    }


async def _decode(
    request: Request,
    state: ServiceState,
    deadline: Deadline,
    mode: str,
    json_outputs: list[str] | None = None,
) -> tuple[DecodedImage, float]:
    """Read and decode the request image within ``deadline``; admission by cost (:mod:`service.admission`)
    for a request in restore ``mode`` runs on its header first, and the admitted cost is noted for
    :mod:`service.memory`. Before the body is read, a queue that nothing would compute (Redis: no live
    worker) refuses the request (``Unavailable``)."""
    settings = state.settings
    await state.queue.check_workers()
    reading = read_image_body(request, settings.max_body_bytes, settings.body_timeout_s)
    data = await deadline.run(reading, "reading the body")
    started = time.perf_counter()

    def admit(width: int, height: int) -> None:
        cost = admission.admit(state.restorer, settings, width, height, mode, json_outputs)
        note_cost(request.scope, cost.pixels)

    decoding = asyncio.to_thread(decode_image, data, settings.max_pixels, admit)
    image = await deadline.run(decoding, "decoding")
    return image, time.perf_counter() - started


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (call after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _infer(
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


def _png_b64(pixels_u8: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels_u8).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _install_boundary(app: FastAPI, metrics_of: Callable[[], Metrics | None]) -> None:
    """Error mapping and request metrics."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics = metrics_of()
        if exc.reason and metrics is not None:
            metrics.rejected.labels(exc.reason).inc()
        headers = {"Retry-After": str(app.state.retry_after)} if exc.retry_after else {}
        body = ErrorBody(error=exc.code, message=app.state.redact(exc.message)).model_dump()
        return JSONResponse(body, status_code=exc.status, headers=headers | exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (404 no such path, 405 method not allowed) in the one error shape."""
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            message += f" (allowed: {exc.headers['Allow']})"
        body = ErrorBody(error=code, message=message).model_dump()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug: 500 in the one error shape, naming no internals (the traceback goes to the log)."""
        body = ErrorBody(error="internal", message="internal server error; see the server log").model_dump()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics = metrics_of()
        if metrics is not None:
            metrics.rejected.labels("bad_input").inc()
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(ErrorBody(error="bad_input", message=details).model_dump(), status_code=422)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        metrics = metrics_of()
        if metrics is not None:
            metrics.request_duration.labels(_route_label(request), str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing heavy happens here: models, queue and metrics are built in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        app.state.metrics = metrics
        remove_log_redaction = install_log_redaction(app.state.redact)
        try:
            state = await build_state(settings, metrics)
            app.state.service = state
            try:
                yield
            finally:
                await state.queue.close()
        finally:
            remove_log_redaction()

    app = FastAPI(
        title="DiR-ISP inference service",
        version=API_VERSION,
        description=(
            "Restoration, degradation-independent representations (DiR) and detection for camera ISP "
            "output (Guo, Luo, Wu, CVPR 2024). See docs/SERVICE.md."
        ),
        lifespan=lifespan,
    )
    app.state.metrics = None
    app.state.settings = settings
    app.state.redact = Redactor.for_urls(settings.queue)
    app.state.retry_after = settings.retry_after_s
    _install_boundary(app, lambda: app.state.metrics)
    app.add_middleware(ReleaseMemory)
    _install_routes(app)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

    return app


def _install_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness (always open)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: restoration model loaded and queue reachable",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse}},
    )
    async def readyz(request: Request) -> JSONResponse:
        state: ServiceState | None = getattr(request.app.state, "service", None)
        settings: Settings = request.app.state.settings
        checks = {"model": state.model.ref if state else "not loaded"}
        ready = state is not None
        if state is not None:
            try:
                await state.queue.ping()
                checks["queue"] = await state.queue.status()
            except Unavailable as exc:
                checks["queue"] = exc.message
                ready = False
            checks["detector"] = state.detector.manifest.name if state.detector else state.detector_error
        if settings.ops_open or has_api_key(request, settings):
            checks = {name: request.app.state.redact(text) for name, text in checks.items()}
        else:
            checks = {"detail": "the checks need 'Authorization: Bearer <key>' (DIR_API_KEYS)"}
        body = ReadyResponse(ready=ready, checks=checks).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        dependencies=OPS_AUTH,
        tags=["ops"],
        summary="Prometheus metrics (needs the API key when DIR_API_KEYS is set, unless DIR_OPS_OPEN)",
        response_class=Response,
        responses={401: ERRORS[401]},
    )
    async def metrics_endpoint(request: Request) -> Response:
        state = _state(request)
        with suppress(Unavailable):  # Redis down: the gauge reads 0, the rest is served
            await state.queue.worker_count()  # refreshes dir_live_workers (Redis mode)
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/models",
        dependencies=AUTH,
        tags=["models"],
        summary="Model store entries",
        response_model=ModelsResponse,
    )
    async def models(request: Request) -> ModelsResponse:
        state = _state(request)
        detector = await state.current_detector()
        detector_ref = f"{detector.manifest.name}/{detector.manifest.version}" if detector else None
        serving = {state.model.ref, detector_ref}
        infos = [
            ModelInfo(
                name=e.manifest.name,
                version=e.manifest.version,
                task=e.manifest.task,
                loaded=e.ref in serving,
                description=e.manifest.description,
                tile=e.manifest.tile.model_dump() if e.manifest.tile else None,
                outputs=[o.name for o in e.manifest.outputs],
                metrics=e.manifest.metrics,
            )
            for e in await asyncio.to_thread(list_entries, state.settings.model_store)
        ]
        return ModelsResponse(
            restore=state.model.ref,
            restore_precision=state.model.precision,
            restore_modes=state.restorer.modes,
            default_restore_mode=state.restorer.default_mode,
            restore_tiles=list(state.restorer.tiles),
            restore_tile_overlap=state.restorer.overlap,
            detect=detector_ref,
            models=infos,
        )

    @app.post(
        "/v1/restore",
        dependencies=AUTH,
        tags=["models"],
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
        format: Literal["png", "jpeg", "jpg"] | None = Query(
            None, description="output format; overrides Accept"
        ),
        quality: int = Query(95, ge=1, le=100, description="JPEG quality"),
        mode: Literal["full", "denoise"] | None = Query(None, description=MODE_HELP),
    ) -> Response:
        started = time.perf_counter()
        state = _state(request)
        fmt = image_format(format, request.headers.get("accept", ""))
        run_mode = mode or state.restorer.default_mode
        state.restorer.check_mode(run_mode)
        deadline = state.deadline(started)
        image, decode_s = await _decode(request, state, deadline, run_mode)
        result = await _infer(request, state, image, ["restored"], deadline, run_mode)
        body = await asyncio.to_thread(encode_image, result.restored_hwc(), fmt, quality)
        headers = _timing_headers(
            state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
        )
        headers["X-Tiles"] = str(result.tiles)
        headers["X-Image-Size"] = f"{image.width}x{image.height}"
        headers["X-Restore-Mode"] = run_mode
        return Response(body, media_type=OUTPUT_MEDIA[fmt], headers=headers)

    @app.post(
        "/v1/represent",
        dependencies=AUTH,
        tags=["models"],
        summary="The DiR representation r+ (and r0 / pilot on request) as .npy, safetensors or JSON",
        openapi_extra=IMAGE_BODY,
        response_class=Response,
        responses={
            200: {
                "model": RepresentJson,
                "description": ".npy or safetensors bytes (octet-stream), or JSON with format=json",
                "content": {"application/octet-stream": {}},
            },
            **ERRORS,
        },
    )
    async def represent(
        request: Request,
        outputs: str = Query(
            "r_plus", description="comma-separated: r_plus, r0, pilot (restored also allowed)"
        ),
        format: Literal["npy", "safetensors", "json"] = Query(
            "npy", description="npy (one output), safetensors or json (base64; for small images)"
        ),
    ) -> Response:
        started = time.perf_counter()
        state = _state(request)
        names = parse_outputs(outputs)
        state.restorer.check_outputs(names)
        if format == "npy" and len(names) != 1:
            raise BadInput(
                f"format=npy carries one array, {len(names)} requested ({names}); use safetensors or json"
            )
        deadline = state.deadline(started)
        image, decode_s = await _decode(request, state, deadline, "full", names if format == "json" else None)
        result = await _infer(request, state, image, names, deadline)
        headers = _timing_headers(
            state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
        )
        arrays = result.arrays
        scales = result.scales
        headers["X-Array-Names"] = ",".join(names)
        headers["X-Array-Shapes"] = ";".join(f"{n}={'x'.join(map(str, a.shape))}" for n, a in arrays.items())
        headers["X-Array-Dtype"] = "float32"
        headers["X-Array-Layout"] = "CHW"
        headers["X-Array-Scales"] = ",".join(f"{n}={s}" for n, s in scales.items())
        if format == "json":
            encoded = sum(admission.base64_size(a.nbytes) for a in arrays.values())
            admission.check_json_size(
                encoded, state.settings, f"{', '.join(names)}: {headers['X-Array-Shapes']}"
            )
            payload = RepresentJson(
                model=state.model.ref,
                width=image.width,
                height=image.height,
                arrays={
                    n: ArrayPayload(shape=list(a.shape), dtype="float32", scale=scales[n], data=b64_array(a))
                    for n, a in arrays.items()
                },
            )
            return JSONResponse(payload.model_dump(), headers=headers)
        if format == "safetensors":
            meta = {
                "model": state.model.ref,
                "layout": "CHW",
                "width": str(image.width),
                "height": str(image.height),
            }
            body = await asyncio.to_thread(safetensors_bytes, arrays, meta)
            return Response(body, media_type="application/octet-stream", headers=headers)
        array = arrays[names[0]]
        headers["X-Array-Shape"] = ",".join(map(str, array.shape))
        return Response(npy_bytes(array), media_type="application/octet-stream", headers=headers)

    @app.post(
        "/v1/detect",
        dependencies=AUTH,
        tags=["models"],
        summary="COCO detections on the DiR-restored image",
        openapi_extra=IMAGE_BODY,
        response_model=DetectResponse,
        responses=ERRORS,
    )
    async def detect(
        request: Request,
        compare: bool = Query(False, description="also detect on the unrestored input"),
        annotate: bool = Query(False, description="include a PNG of the restored image with boxes drawn"),
        conf: float | None = Query(
            None, ge=0.0, le=1.0, description="score threshold (default: the manifest's)"
        ),
        iou: float | None = Query(None, ge=0.0, le=1.0, description="NMS IoU (default: the manifest's)"),
        mode: Literal["full", "denoise"] | None = Query(None, description="restore mode: " + MODE_HELP),
    ) -> DetectResponse:
        started = time.perf_counter()
        state = _state(request)
        run_mode = mode or state.restorer.default_mode
        detector = await state.current_detector()
        if detector is None:
            raise Unavailable(state.detector_error)
        state.restorer.check_mode(run_mode)
        deadline = state.deadline(started)
        image, decode_s = await _decode(request, state, deadline, run_mode)
        result = await _infer(request, state, image, ["restored"], deadline, run_mode)
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
