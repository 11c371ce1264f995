"""The app state: what the lifespan builds (model, queue, restorer, detector) and the routes use."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from modelstore import detector as detection
from modelstore.errors import ModelStoreError
from modelstore.store import ModelEntry, resolve_entry
from service.batching import BatchPolicy
from service.deadline import Deadline
from service.embedded import EmbeddedQueue
from service.errors import BadInput, InferenceError, ModelNotFound
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
    #: ``extra["aligned_for"]`` of the entry's manifest (a task-aligned entry), else None.
    aligned_for: dict[str, Any] | None = None
    #: The detector entry ``aligned_for`` names, when it is installed and loads.
    aligned_detector: detection.Detector | None = None
    #: The states of the ``DIR_SERVE_MODELS`` entries (on the default state; empty on theirs).
    extras: list[ServiceState] = field(default_factory=list)
    #: The default state (on the state of a ``DIR_SERVE_MODELS`` entry): it owns the service's detector.
    base: ServiceState | None = None

    @property
    def served(self) -> list[ServiceState]:
        """Every served entry's state, the default first, then ``DIR_SERVE_MODELS`` in order."""
        return [self, *self.extras]

    def select(self, model: str | None) -> ServiceState:
        """The state of the served entry ``model`` names (``name/version``, or ``name``: the first served
        entry of that name); None or empty: the default. ``ModelNotFound`` (404) names the served ones."""
        if not model:
            return self
        for state in self.served:
            if model in (state.model.ref, state.model.entry.manifest.name):
                return state
        refs = ", ".join(state.model.ref for state in self.served)
        hint = (
            "; with the Redis queue only DIR_RESTORE_MODEL is served (extra models, DIR_SERVE_MODELS, need "
            "DIR_QUEUE=embedded)"
            if self.settings.uses_redis
            else "; add it to DIR_SERVE_MODELS to serve it"
        )
        raise ModelNotFound(f"model {model!r} is not served here (served: {refs}){hint}")

    async def task_detector(self) -> detection.Detector | None:
        """The detector ``/v1/detect`` runs on this entry's output: the one its ``aligned_for`` names when
        installed, else the service's (:meth:`current_detector`)."""
        return self.aligned_detector or await (self.base or self).current_detector()

    async def close_queues(self) -> None:
        """Close the queue of every served entry."""
        for state in self.served:
            await state.queue.close()

    async def current_detector(self) -> detection.Detector | None:
        """The loaded detector. While none is, the store is searched again (at most every
        ``DIR_DETECTOR_RESCAN_S``), so a detector installed while the server runs serves without a restart."""
        if self.base is not None:
            return await self.base.current_detector()
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
        # A task-aligned entry's A is what was aligned; the denoise graph does not use A.
        aligned = model.entry.manifest.aligned_for is not None
        restorer.default_mode = "full" if aligned else restorer.resolve_mode(settings.restore_mode)
    except BadInput as exc:
        raise ModelStoreError(f"DIR_RESTORE_MODE={settings.restore_mode}: {exc.message}") from exc
    return restorer


def load_aligned_detector(settings: Settings, entry: ModelEntry) -> detection.Detector | None:
    """The detector entry a task-aligned ``entry`` records (``extra.aligned_for.detector_entry``,
    ``NAME@VERSION`` in the model store) when it is installed and loads, else None (logged)."""
    recorded = str((entry.manifest.aligned_for or {}).get("detector_entry") or "")
    if not recorded:
        return None
    name, _, version = recorded.partition("@")
    path = settings.model_store / name / version
    if not version or not path.is_dir():
        log.warning(
            "%s was aligned for detector %s, which is not installed; /v1/detect?model=%s runs "
            "the service's detector",
            entry.ref,
            recorded,
            entry.ref,
        )
        return None
    try:
        return detection.load_detector(path, settings.provider_list, settings.threads, settings.pins)
    except ModelStoreError as exc:
        log.error("detector entry %s of %s refused: %s", path, entry.ref, exc.message)
        return None


async def _serve_entry(settings: Settings, metrics: Metrics, entry: ModelEntry) -> ServiceState:
    """Load, verify and warm up the restoration ``entry``, build its queue and restorer, and load the
    detector it was aligned for (if any); the service's detector is the caller's to add. A task-aligned
    entry's default restore mode is ``full`` whatever ``DIR_RESTORE_MODE`` says."""
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
    aligned_detector = await asyncio.to_thread(load_aligned_detector, settings, entry)
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
    return ServiceState(
        settings,
        metrics,
        model,
        queue,
        restorer,
        None,
        "",
        aligned_for=entry.manifest.aligned_for,
        aligned_detector=aligned_detector,
    )


async def build_state(settings: Settings, metrics: Metrics) -> ServiceState:
    """Load and verify the restoration entry (``DIR_RESTORE_MODEL``, the default) and those of
    ``DIR_SERVE_MODELS``, each with its own queue and restorer; load the detector when one is installed.

    Raises ``ModelStoreError`` (missing entry, sha256 mismatch, bad graph; ``DIR_SERVE_MODELS`` with the
    Redis queue): the service refuses to start.
    """
    if settings.served_models and settings.uses_redis:
        raise ModelStoreError(
            f"DIR_SERVE_MODELS={settings.serve_models}: extra models are served with the embedded queue only "
            "(DIR_QUEUE=embedded); with the Redis queue run one deployment per entry (DIR_RESTORE_MODEL)"
        )
    entries = [resolve_entry(settings.model_store, settings.restore_model, "restore")]
    for ref in settings.served_models:
        entry = resolve_entry(settings.model_store, ref, "restore")
        if entry.ref not in {e.ref for e in entries}:
            entries.append(entry)
    state = await _serve_entry(settings, metrics, entries[0])
    try:
        for entry in entries[1:]:
            extra = await _serve_entry(settings, metrics, entry)
            extra.base = state
            state.extras.append(extra)
    except BaseException:
        await state.close_queues()
        raise
    state.detector, state.detector_error = await asyncio.to_thread(load_detector, settings)
    return state
