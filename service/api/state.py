"""The app state: what the lifespan builds (model, queue, restorer, detector) and the routes use."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from modelstore import detector as detection
from modelstore.errors import ModelStoreError
from modelstore.store import resolve_entry
from service.batching import BatchPolicy
from service.deadline import Deadline
from service.embedded import EmbeddedQueue
from service.errors import BadInput, InferenceError
from service.inference import Restorer
from service.memory import TRIM_ABOVE_PIXELS
from service.metrics import Metrics
from service.queue import TileQueue
from service.redis_queue import RedisQueue
from service.settings import Settings
from service.store import RestoreModel, tile_geometry

log = logging.getLogger("dir.service")

#: Appended to 504 messages of synchronous requests.
JOBS_HINT = (
    "; for long work submit the image as a job (POST /v1/jobs/restore, /v1/jobs/represent or "
    "/v1/jobs/detect, "
    "then poll GET /v1/jobs/{id}), which this deadline does not apply to"
)

NO_DETECTOR = (
    "no detector installed; run `dir-models add-detector yolo-fastestv2 PATH/TO/weights.pth` "
    "(or add a YOLOv5/YOLOv8 ONNX export) to create a task=detect entry under the model store"
)


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
                    found = await asyncio.to_thread(load_detector, self.settings)
                    self.detector, self.detector_error = found
                    self.detector_scanned = time.monotonic()
                    if self.detector is not None:
                        log.info("detector %s found in the model store; serving it", self.detector.entry_dir)
        return self.detector

    def _rescan_due(self) -> bool:
        return time.monotonic() - self.detector_scanned >= self.settings.detector_rescan_s

    def deadline(self, started: float) -> Deadline:
        """The deadline of a request that arrived at ``started`` (perf_counter): ``DIR_REQUEST_TIMEOUT_S``
        later, extended by :meth:`scale_deadline` once its cost is known. It covers reading the body,
        decoding, tiling, both passes and stitching."""
        return Deadline.after(self.settings.request_timeout_s, time.perf_counter() - started, hint=JOBS_HINT)

    def shrink_arenas(self) -> None:
        """``DIR_ORT_ARENA_SHRINK``: give the free chunks of the sessions' CPU arenas back (embedded queue; a
        Redis API process has no sessions). A failure is logged: it never fails a request."""
        if not self.settings.ort_arena_shrink or self.model.session is None:
            return
        try:
            seconds = self.model.shrink_arenas()
        except Exception:  # the answer has been sent: memory not given back is no reason to fail
            log.exception("shrinking the ONNX Runtime arenas of %s failed", self.model.ref)
            return
        log.debug("ONNX Runtime arenas of %s shrunk in %.2f s", self.model.ref, seconds)

    async def after_model(self, cost_pixels: int) -> None:
        """Once a request's tiles are all computed: for a large one (cost from :data:`TRIM_ABOVE_PIXELS`
        tile pixels), shrink the arenas before its answer is encoded, so the encoder's buffers do not come on
        top of the arena's (12 MP JPEG, dir-restore/3.3.0, 2 cores: the peak fell from 1560 to 1168 MiB)."""
        if cost_pixels >= TRIM_ABOVE_PIXELS:
            await asyncio.to_thread(self.shrink_arenas)

    def scale_deadline(self, deadline: Deadline, cost_pixels: int) -> None:
        """Add ``DIR_REQUEST_TIMEOUT_PER_MP_S`` per megapixel of admitted cost (tile pixels over all passes)
        to a synchronous request's deadline."""
        per_mp = self.settings.request_timeout_per_mp_s
        if per_mp > 0:
            megapixels = cost_pixels / 1e6
            rule = f"DIR_REQUEST_TIMEOUT_S + DIR_REQUEST_TIMEOUT_PER_MP_S {per_mp:g} s x {megapixels:.3g} MP"
            deadline.extend(per_mp * megapixels, rule)


def load_detector(settings: Settings) -> tuple[detection.Detector | None, str]:
    """The detector ``DIR_DETECT_MODEL`` names (or the store's newest) and ``""``, or ``None`` and why."""
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


def _build_queue(settings: Settings, metrics: Metrics, model: RestoreModel) -> TileQueue:
    policy = BatchPolicy(settings.max_batch, settings.max_queue_delay_ms / 1000.0, settings.queue_bound)
    if settings.uses_redis:
        return RedisQueue(
            settings.queue,
            model.ref,
            policy,
            settings.stream_prefix,
            graphs=model.graphs,
            priority_tiles=settings.priority_tiles,
            on_live=metrics.live_workers.labels(model.ref).set,
        )
    return EmbeddedQueue(model.ref, model.run, policy, metrics)


def _build_restorer(
    settings: Settings, model: RestoreModel, queue: TileQueue, tiles: tuple[int, ...], overlap: int
) -> Restorer:
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
    return restorer


async def build_state(settings: Settings, metrics: Metrics) -> ServiceState:
    """Load and verify the restoration entry, build the queue, load the detector when one is installed.

    Raises ``ModelStoreError`` (missing entry, sha256 mismatch, bad graph): the service refuses to start.
    """
    entry = resolve_entry(settings.model_store, settings.restore_model, "restore")
    model = await asyncio.to_thread(RestoreModel.from_settings, entry, settings, not settings.uses_redis)
    queue = _build_queue(settings, metrics, model)
    _, tiles, overlap = tile_geometry(model.entry, settings)
    restorer = _build_restorer(settings, model, queue, tiles, overlap)
    if not settings.uses_redis and settings.warms_up(model.on_gpu):
        try:
            seconds = await asyncio.to_thread(model.warm_up, tiles)
        except InferenceError as exc:
            raise ModelStoreError(f"{model.ref} failed its start-up run: {exc.message}") from exc
        log.info(
            "warmed up %s: %d graph(s) x tiles %s px in %.1f s", model.ref, len(model.graphs), tiles, seconds
        )
    await queue.start()
    detector, detector_error = await asyncio.to_thread(load_detector, settings)
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
