"""The embedded backend: an asyncio batcher inside the API process (the default; no Redis needed).

One lane per graph of the model (the serving graph, and the guide graph of two-pass entries) and tile
shape (the service picks each image's tile side): tiles wait in a deque per lane; a single task applies
``BatchPolicy`` to each lane with the injected clock, runs the ready batch whose oldest tile waited longest
in a worker thread (ONNX Runtime releases the GIL) and hands outputs back per request. A batch holds tiles
of one lane only; the queue bound counts a graph's tiles over all its lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.batching import BatchPolicy
from service.errors import DeadlineExceeded, InferenceError, QueueFull, ServiceError
from service.metrics import Metrics
from service.queue import SERVE_GRAPH, TileResult, lane_ref
from service.tiling import stack_tiles

#: ``runner(inputs, outputs, graph)``: one batch ``{input name: (n, ...)}`` of ``graph`` -> outputs.
Runner = Callable[[dict[str, np.ndarray], list[str], str], dict[str, np.ndarray]]
#: A lane: the graph, and each input's per-tile shape (sorted by input name).
Lane = tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]


@dataclass
class _Request:
    """One submitted request: its tiles' outputs are filled in as batches complete."""

    count: int
    outputs: list[str]
    deadline: float
    future: asyncio.Future[TileResult]
    results: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    remaining: int = 0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0


@dataclass
class _Tile:
    request: _Request
    index: int
    inputs: dict[str, np.ndarray]
    enqueued: float


class EmbeddedQueue:
    """In-process batching queue for one model. ``clock`` is injectable (monotonic seconds)."""

    def __init__(
        self,
        model_ref: str,
        runner: Runner,
        policy: BatchPolicy,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_ref = model_ref
        self._runner = runner
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._lanes: dict[Lane, deque[_Tile]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Tiles waiting in every lane (not yet in a running batch)."""
        return sum(len(lane) for lane in self._lanes.values())

    def graph_depth(self, graph: str) -> int:
        """Tiles waiting for ``graph``, over all tile shapes."""
        return sum(len(lane) for key, lane in self._lanes.items() if key[0] == graph)

    def _set_depth(self, graph: str) -> None:
        self._metrics.queue_depth.labels(lane_ref(self.model_ref, graph)).set(self.graph_depth(graph))

    async def start(self) -> None:
        """Start the batcher task."""
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.model_ref}")

    async def close(self) -> None:
        """Stop the batcher task; waiting requests are failed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for lane in self._lanes.values():
            while lane:
                tile = lane.popleft()
                if not tile.request.future.done():
                    tile.request.future.set_exception(DeadlineExceeded("service shutting down"))

    async def ping(self) -> None:
        """Always reachable while the batcher task runs."""

    async def status(self) -> str:
        """One line for /readyz."""
        return f"ok: embedded, {self.depth} tiles waiting"

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        timeout_s: float,
        graph: str = SERVE_GRAPH,
    ) -> TileResult:
        """Queue one request's tiles for ``graph`` (inputs ``(n, ...)`` each) and wait for their outputs
        ``(n, ...)`` (``(n, C, T/s, T/s)``; ``guide_sum`` ``(n, K)``)."""
        count = len(next(iter(inputs.values())))
        depth = self.graph_depth(graph)
        if not self._policy.admit(depth, count):
            raise QueueFull(
                f"queue for {lane_ref(self.model_ref, graph)} holds {depth} tiles; {count} more "
                f"exceed the bound {self._policy.bound}"
            )
        shapes = tuple(sorted((name, tuple(array.shape[1:])) for name, array in inputs.items()))
        lane = self._lanes.setdefault((graph, shapes), deque())
        now = self._clock()
        future: asyncio.Future[TileResult] = asyncio.get_running_loop().create_future()
        request = _Request(
            count, outputs, now + timeout_s, future, {o: [None] * count for o in outputs}, count
        )
        lane.extend(
            _Tile(request, i, {name: array[i] for name, array in inputs.items()}, now) for i in range(count)
        )
        self._set_depth(graph)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise DeadlineExceeded(f"request not finished within its {timeout_s:.3g} s deadline") from exc

    async def _loop(self) -> None:
        while True:
            now = self._clock()
            ready: list[tuple[float, Lane, int]] = []
            waits: list[float] = []
            for key, lane in self._lanes.items():
                decision = self._policy.decide(now, len(lane), lane[0].enqueued if lane else None)
                if decision.take:
                    ready.append((lane[0].enqueued, key, decision.take))
                elif decision.wait_s is not None:
                    waits.append(decision.wait_s)
            if not ready:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(waits, default=None))
                continue
            _, key, take = min(ready)
            batch = [self._lanes[key].popleft() for _ in range(take)]
            self._set_depth(key[0])
            await self._run(key[0], batch)

    async def _run(self, graph: str, batch: list[_Tile]) -> None:
        now = self._clock()
        live = []
        for tile in batch:
            if tile.request.future.done():
                continue
            if self._policy.expired(now, tile.request.deadline):
                tile.request.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            live.append(tile)
        if not live:
            return
        outputs = sorted({o for t in live for o in t.request.outputs})
        label = lane_ref(self.model_ref, graph)
        for tile in live:
            wait = now - tile.enqueued
            tile.request.queue_wait_s = max(tile.request.queue_wait_s, wait)
            self._metrics.queue_wait.labels(label).observe(wait)
        self._metrics.batch_size.labels(label).observe(len(live))
        stacked = {name: stack_tiles([t.inputs[name] for t in live]) for name in live[0].inputs}
        started = time.perf_counter()
        try:
            values = await asyncio.to_thread(self._runner, stacked, outputs, graph)
        except Exception as exc:  # the batcher must outlive any failing batch
            error = (
                exc
                if isinstance(exc, ServiceError)
                else InferenceError(f"batch of {len(live)} failed: {exc}")
            )
            for tile in live:
                if not tile.request.future.done():
                    tile.request.future.set_exception(type(error)(error.message))
            return
        elapsed = time.perf_counter() - started
        self._metrics.compute.labels(label).observe(elapsed)
        seen: set[int] = set()
        for k, tile in enumerate(live):
            request = tile.request
            if id(request) not in seen:
                request.compute_s += elapsed
                seen.add(id(request))
            for name in request.outputs:
                request.results[name][tile.index] = values[name][k]
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                stacked_out = {name: np.stack(parts) for name, parts in request.results.items()}  # type: ignore[arg-type]
                request.future.set_result(TileResult(stacked_out, request.queue_wait_s, request.compute_s))
