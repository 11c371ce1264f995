"""Serving a verified model_store entry: its precision, denoise graph, tile geometry and
:class:`RestoreModel` (the sessions behind the tile queue).

Listing, resolving and verifying entries is :mod:`modelstore.store`; sessions are :mod:`modelstore.runner`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from modelstore.errors import ModelStoreError
from modelstore.manifest import GuideSpec
from modelstore.runner import choose_providers, make_session
from modelstore.store import ModelEntry, verify_entry
from service.errors import InferenceError
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH, WINDOW_INPUT
from service.settings import Settings
from service.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, window_sums


def choose_graph(entry: ModelEntry, precision: str, providers: list[str]) -> tuple[str, str]:
    """``(precision, onnx file)`` to serve: ``fp32`` the manifest's ``onnx_file``; ``fp16`` the entry's
    half-precision graph (``extra.fp16.onnx_file``, same I/O); ``auto`` fp16 when the CUDA provider is
    in ``providers`` and the entry has one, else fp32. ``fp16`` on an entry without one raises."""
    fp16 = entry.manifest.extra.get("fp16")
    fp16_file = fp16.get("onnx_file") if isinstance(fp16, dict) else None
    if precision == "fp16" and not fp16_file:
        raise ModelStoreError(
            f"{entry.ref} has no fp16 graph (manifest extra.fp16.onnx_file); use DIR_PRECISION=fp32 or auto"
        )
    if fp16_file and entry.manifest.file_sha256(str(fp16_file)) is None:
        raise ModelStoreError(f"{entry.ref}: manifest records no sha256 for {fp16_file}; refusing it")
    if precision == "fp16" or (precision == "auto" and fp16_file and "CUDAExecutionProvider" in providers):
        return "fp16", str(fp16_file)
    return "fp32", entry.manifest.onnx_file


def denoise_file(entry: ModelEntry) -> str | None:
    """The entry's ``denoise`` graph (manifest ``extra.denoise.onnx_file``: image -> restored, one pass),
    or None when it has none. A malformed ``extra.denoise``, or a graph the manifest names without a sha256,
    raises ``ModelStoreError``."""
    try:
        spec = entry.manifest.denoise
    except ValueError as exc:
        raise ModelStoreError(f"{entry.ref}: malformed manifest extra.denoise: {exc}") from exc
    if spec is None:
        return None
    if entry.manifest.file_sha256(spec.onnx_file) is None:
        raise ModelStoreError(f"{entry.ref}: manifest records no sha256 for {spec.onnx_file}; refusing it")
    return spec.onnx_file


def tile_geometry(entry: ModelEntry, settings: Settings) -> tuple[int, tuple[int, ...], int]:
    """``(base side, sides to choose from per image, overlap)`` in pixels for ``entry``: the settings'
    ``DIR_TILE_SIZE`` / ``DIR_TILE_SIZES`` / ``DIR_TILE_OVERLAP`` over the manifest's ``tile``, else
    256/32."""
    spec = entry.manifest.tile
    return settings.tile_geometry(
        spec.size if spec else DEFAULT_TILE, spec.overlap if spec else DEFAULT_OVERLAP
    )


class RestoreModel:
    """A verified restoration entry and its sessions: the serving graph and, for two-pass entries, the
    guide graph; for entries with one, the ``denoise`` graph (image -> restored, one pass).

    ``run`` takes one graph's inputs for a batch of tiles: ``image`` ``(N, 3, T, T)`` sRGB, uint8 0..255 or
    float32 in [0, 1] (T a multiple of ``size_multiple``), plus ``guide_mean`` ``(N, K)`` float32 for the
    serving graph of a two-pass entry, or ``owned_window`` ``(N, 4)`` for its guide graph. The serving graph
    returns ``restored`` ``(N, 3, T, T)`` in [0, 1] and ``r_plus``/``r0``/``pilot`` ``(N, C, T/s, T/s)``; the
    guide graph's ``guide_features`` ``(N, K, T/s, T/s)`` are reduced at once to ``guide_sum`` ``(N, K)``,
    each tile's features summed over its ``owned_window``. The denoise graph takes ``image`` alone and
    returns ``restored``.
    """

    def __init__(
        self,
        entry: ModelEntry,
        session: ort.InferenceSession | None,
        precision: str = "fp32",
        guide_session: ort.InferenceSession | None = None,
        denoise_session: ort.InferenceSession | None = None,
        parallel: int = 1,
        wide_sessions: dict[str, ort.InferenceSession] | None = None,
        max_call_pixels: int = 0,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if max_call_pixels < 0:
            raise ValueError(f"max_call_pixels must be >= 0, got {max_call_pixels}")
        self.parallel = parallel
        self.max_call_pixels = max_call_pixels
        self._wide = dict(wide_sessions or {})
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="dir-run") if parallel > 1 else None
        self.entry = entry
        self.session = session
        self.guide_session = guide_session
        self.denoise_session = denoise_session
        self.precision = precision
        manifest = entry.manifest
        self.input_name = manifest.inputs[0].name
        self.output_names = [o.name for o in manifest.outputs]
        self.guide: GuideSpec | None = manifest.guide
        self.denoise_file = denoise_file(entry)
        graphs = (GUIDE_GRAPH, SERVE_GRAPH) if self.guide else (SERVE_GRAPH,)
        self.graphs = graphs + ((DENOISE_GRAPH,) if self.denoise_file else ())
        self.size_multiple = manifest.size_multiple
        first_dim = manifest.inputs[0].shape[0] if manifest.inputs[0].shape else "N"
        self.fixed_batch: int | None = first_dim if isinstance(first_dim, int) else None

    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        providers: list[str] | None,
        threads: int,
        with_session: bool = True,
        precision: str = "auto",
        spinning: bool = True,
        parallel: int = 1,
        max_call_pixels: int = 0,
        pins: Mapping[str, str] | None = None,
        arena: bool = True,
    ) -> RestoreModel:
        """Verify ``entry`` (against ``pins`` too, see :func:`check_pin`) and build its sessions
        (``with_session=False``: manifest only, for a Redis API).

        ``precision`` picks the serving graph (see :func:`choose_graph`); the guide and denoise graphs are
        always the entry's own (fp32). ``spinning``: see :func:`make_session`. ``parallel``: :meth:`run`
        splits a batch into up to this many parts run at once, each with ``threads`` intra-op threads; with
        ``parallel > 1`` every graph gets a second session of ``parallel * threads`` threads for calls of a
        single tile. ``max_call_pixels``: see :meth:`run`. ``arena``: see :func:`make_session`.
        """
        verify_entry(entry, pins)
        chosen, onnx_file = choose_graph(entry, precision, choose_providers(providers))
        if not with_session:
            return cls(entry, None, chosen)
        guide = entry.manifest.guide
        denoise = denoise_file(entry)
        files = {SERVE_GRAPH: onnx_file}
        if guide:
            files[GUIDE_GRAPH] = guide.onnx_file
        if denoise:
            files[DENOISE_GRAPH] = denoise
        paths = {graph: entry.path / name for graph, name in files.items()}
        sessions = {g: make_session(path, providers, threads, spinning, arena) for g, path in paths.items()}
        wide = (
            {
                g: make_session(path, providers, threads * parallel, spinning, arena)
                for g, path in paths.items()
            }
            if parallel > 1
            else {}
        )
        return cls(
            entry,
            sessions[SERVE_GRAPH],
            chosen,
            sessions.get(GUIDE_GRAPH),
            sessions.get(DENOISE_GRAPH),
            parallel,
            wide,
            max_call_pixels,
        )

    @classmethod
    def from_settings(cls, entry: ModelEntry, settings: Settings, with_session: bool = True) -> RestoreModel:
        """:meth:`load` with the service settings: providers, precision, spinning, the split of a model
        call into ``settings.parallel`` parts of ``settings.run_threads`` threads each, at most
        ``DIR_MAX_BATCH`` tiles of the base tile side's pixels computed at once, and the entry's pin
        (``DIR_PINNED_DIGESTS``)."""
        parallel = settings.parallel("CUDAExecutionProvider" in choose_providers(settings.provider_list))
        base, _, _ = tile_geometry(entry, settings)
        return cls.load(
            entry,
            settings.provider_list,
            settings.run_threads(parallel),
            with_session,
            settings.precision,
            settings.ort_spinning,
            parallel,
            settings.max_batch * base * base,
            settings.pins,
            settings.ort_cpu_arena,
        )

    @property
    def ref(self) -> str:
        """``name/version`` of the loaded entry."""
        return self.entry.ref

    def graph_outputs(self, graph: str) -> list[str]:
        """Output names of ``graph`` (``SERVE_GRAPH``; ``GUIDE_GRAPH`` for two-pass entries;
        ``DENOISE_GRAPH`` for entries with a denoise graph)."""
        if graph == SERVE_GRAPH:
            return self.output_names
        if graph == GUIDE_GRAPH and self.guide is not None:
            return [GUIDE_SUM]
        if graph == DENOISE_GRAPH and self.denoise_file is not None:
            return ["restored"]
        raise InferenceError(f"{self.ref} has no graph {graph!r} (it has {list(self.graphs)})")

    @property
    def on_gpu(self) -> bool:
        """Whether the serving session runs on the CUDA provider."""
        return self.session is not None and "CUDAExecutionProvider" in self.session.get_providers()

    def shrink_arenas(self) -> float:
        """Give the free chunks of every session's ONNX Runtime CPU arena back to the OS; returns the seconds.

        One single-tile call of a small side (64 px, rounded up to the model's multiple) per session, with the
        run option ``memory.enable_memory_arena_shrinkage`` = ``cpu:0``: at its end the arena frees every
        chunk not in use (chunks of a concurrent call stay). Measured on dir-restore/3.3.0, 2 cores: after a
        batch of eight 512-px denoise tiles the process held 805 MiB, 141 MiB after one such call (0.2 s).
        """
        started = time.perf_counter()
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        side = -(-64 // self.size_multiple) * self.size_multiple
        for graph in self.graphs:
            feed = {
                name: array.astype(np.float32) / np.float32(255.0) if array.dtype == np.uint8 else array
                for name, array in self.grey_feed(graph, 1, side).items()
                if name != WINDOW_INPUT
            }
            sessions = {
                id(s): s for s in (self._graph_session(graph), self._wide.get(graph)) if s is not None
            }
            for session in sessions.values():
                session.run(None, feed, options)
        return time.perf_counter() - started

    def _graph_session(self, graph: str) -> ort.InferenceSession | None:
        """The session that runs the parts of ``graph``'s calls (None in a Redis API process)."""
        return {
            SERVE_GRAPH: self.session,
            GUIDE_GRAPH: self.guide_session,
            DENOISE_GRAPH: self.denoise_session,
        }[graph]

    def parts(self, count: int, image: np.ndarray | None = None) -> list[tuple[int, int]]:
        """The ``[start, end)`` tile ranges one call of ``count`` tiles runs as, ``parallel`` at a time.

        A batch runs in up to ``parallel`` parts at once (one session serves concurrent runs). With
        ``max_call_pixels`` and the batch's ``image`` ``(N, 3, T, T)``, the parts running at once hold at most
        that many pixels (at least one tile each), so a batch of large tiles runs in more, smaller parts
        instead of needing more memory. A graph with a fixed batch of 1 runs tile by tile.
        """
        step = max(1, -(-count // self.parallel))
        if self.max_call_pixels and image is not None and image.ndim == 4:
            tile_pixels = int(image.shape[-2]) * int(image.shape[-1])
            step = min(step, max(1, self.max_call_pixels // (self.parallel * tile_pixels)))
        if self.fixed_batch == 1:
            step = 1
        return [(a, min(a + step, count)) for a in range(0, count, step)]

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str], graph: str = SERVE_GRAPH
    ) -> dict[str, np.ndarray]:
        """Run one batch of ``graph``; the guide graph's features are summed over each tile's ``owned_window``
        right here. ORT failures and bad windows become ``InferenceError`` carrying the input shapes."""
        unknown = [o for o in outputs if o not in self.graph_outputs(graph)]
        session = self._graph_session(graph)
        if unknown:
            raise InferenceError(f"{self.ref} has no outputs {unknown} (it has {self.graph_outputs(graph)})")
        if session is None:
            raise InferenceError(f"{self.ref} was loaded without a session (Redis API process)")
        windows = inputs.get(WINDOW_INPUT)
        if (graph == GUIDE_GRAPH) != (windows is not None):
            raise InferenceError(
                f"{WINDOW_INPUT} is an input of the guide graph, and of it alone (graph {graph!r}, inputs "
                f"{sorted(inputs)})"
            )
        feed = {
            name: array.astype(np.float32) / np.float32(255.0)
            if array.dtype == np.uint8
            else np.ascontiguousarray(array, dtype=np.float32)
            for name, array in inputs.items()
            if name != WINDOW_INPUT
        }
        names = [self.guide.outputs[0].name] if windows is not None and self.guide else outputs
        bounds = self.parts(len(next(iter(feed.values()))), feed.get(self.input_name))

        def run_part(bound: tuple[int, int]) -> list[np.ndarray]:
            return list(session.run(names, {name: a[bound[0] : bound[1]] for name, a in feed.items()}))

        try:
            if len(bounds) == 1:
                wide = self._wide.get(graph, session)
                values = list(wide.run(names, feed))
            else:
                parts = list(self._pool.map(run_part, bounds) if self._pool else map(run_part, bounds))
                values = [np.concatenate([p[k] for p in parts]) for k in range(len(names))]
            if windows is not None:
                return {GUIDE_SUM: window_sums(np.asarray(values[0], dtype=np.float32), windows)}
        except Exception as exc:
            shapes = {name: a.shape for name, a in inputs.items()}
            raise InferenceError(f"{self.ref} failed on a batch of shapes {shapes}: {exc}") from exc
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)}

    def grey_feed(self, graph: str, count: int, side: int) -> dict[str, np.ndarray]:
        """Inputs of ``count`` mid-grey ``side``-px tiles for ``graph``: the image, plus the serving graph's
        guide mean or the guide graph's owned window (one feature cell), shaped from the session's inputs."""
        session = self._graph_session(graph)
        assert session is not None
        feed: dict[str, np.ndarray] = {self.input_name: np.full((count, 3, side, side), 128, np.uint8)}
        for spec in session.get_inputs():
            if spec.name != self.input_name:
                width = spec.shape[1] if isinstance(spec.shape[1], int) else 1
                feed[spec.name] = np.zeros((count, width), np.float32)
        if graph == GUIDE_GRAPH:
            feed[WINDOW_INPUT] = np.tile(np.array([[0, 1, 0, 1]], np.uint16), (count, 1))
        return feed

    def warm_up(self, sides: Sequence[int]) -> float:
        """Run every graph once per tile side in ``sides`` the way served batches run; returns the seconds.

        ONNX Runtime sizes a session's memory arena and prepares its kernels on the first run of each input
        shape, and one session running several parts at once needs memory for each. Without this, the first
        burst of requests after start-up pays for all of it (measured on dir-restore/3.2.0, 2 cores: a first
        batch of seven 512-px denoise tiles took 1.5-1.6 s against 0.9 s once warm). Per graph and side:
        one call of ``parallel`` parts of the largest part size that ``max_call_pixels`` allows (all parts
        at once, on the parts' session), and, with parts, one single-tile call (the wide session).
        """
        if self.session is None:
            return 0.0
        started = time.perf_counter()
        for graph in self.graphs:
            outputs = [GUIDE_SUM] if graph == GUIDE_GRAPH else self.graph_outputs(graph)[:1]
            for side in sides:
                per_part = max(1, self.max_call_pixels // (self.parallel * side * side))
                per_part = 1 if self.fixed_batch == 1 or not self.max_call_pixels else per_part
                self.run(self.grey_feed(graph, self.parallel * per_part, side), outputs, graph)
                if self.parallel > 1:
                    self.run(self.grey_feed(graph, 1, side), outputs, graph)
        return time.perf_counter() - started
