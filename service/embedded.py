"""The embedded backend: an asyncio batcher inside the API process (the default; no Redis needed).

One lane per graph of the model (the serving graph, and the guide graph of two-pass entries) and tile
shape (the service picks each image's tile side): tiles wait in a lane per request; a single task applies
``BatchPolicy`` to each lane with the injected clock, runs one ready batch at a time in a worker thread
(ONNX Runtime releases the GIL) and hands outputs back per request. A batch holds tiles of one lane only;
the queue bound counts a graph's tiles over all its lanes.

Fair scheduling (least tiles served first): of the ready lanes, the one holding the request with the fewest
tiles run so far goes next (ties: the oldest tile), and its batch is filled tile by tile from the request
with the fewest tiles run so far (ties: the earliest). A small request's tiles thus go into the next batch
even behind a request of thousands of tiles, which still gets every slot the small ones leave.

A request that is cancelled (its client went away) or whose deadline passes has its waiting tiles removed
at once; a batch already running finishes.
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
from service.deadline import Deadline
from service.errors import DeadlineExceeded, InferenceError, QueueFull, ServiceError
from service.metrics import Metrics
from service.queue import SERVE_GRAPH, TileResult, TileSink, lane_ref
from service.tiling import stack_tiles

#: ``runner(inputs, outputs, graph)``: one batch ``{input name: (n, ...)}`` of ``graph`` -> outputs.
Runner = Callable[[dict[str, np.ndarray], list[str], str], dict[str, np.ndarray]]
#: A lane: the graph, and each input's per-tile shape (sorted by input name).
Lane = tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]


@dataclass(eq=False)
class _Request:
    """One submitted request: its tiles' outputs are filled in as batches complete. ``deadline`` is on the
    queue's clock; ``budget`` names the configured deadline in messages; ``served`` counts tiles taken into
    batches (the fair-scheduling key)."""

    count: int
    outputs: list[str]
    deadline: float
    budget: Deadline
    future: asyncio.Future[TileResult]
    results: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    remaining: int = 0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0
    served: int = 0
    sink: TileSink | None = None

    def deliver(self, index: int, values: dict[str, np.ndarray]) -> None:
        """Tile ``index``'s outputs: to the sink, or kept for the result; a failing sink fails the request."""
        if self.sink is None:
            for name in self.outputs:
                self.results[name][index] = values[name]
            return
        try:
            self.sink(index, values)
        except Exception as exc:  # the batcher must outlive any failing sink
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            self.future.set_exception(InferenceError(f"tile {index} could not be taken: {message}"))


@dataclass
class _Tile:
    request: _Request
    index: int
    inputs: dict[str, np.ndarray]
    enqueued: float


class _LaneQueue:
    """The tiles waiting in one lane, per request in arrival order; batches are filled fairly (fewest tiles
    served first)."""

    def __init__(self) -> None:
        self.waiting: dict[_Request, deque[_Tile]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, request: _Request, tiles: list[_Tile]) -> None:
        """Queue ``tiles`` of ``request``."""
        self.waiting.setdefault(request, deque()).extend(tiles)
        self.size += len(tiles)

    def least_served(self) -> int:
        """The fewest tiles served to any waiting request (the lane's fair-scheduling priority)."""
        return min((request.served for request in self.waiting), default=0)

    def oldest(self) -> float | None:
        """When the longest-waiting tile was queued (None: empty)."""
        return min((tiles[0].enqueued for tiles in self.waiting.values()), default=None)

    def take(self, count: int) -> list[_Tile]:
        """Up to ``count`` tiles, each from the request with the fewest tiles served so far (ties: the one
        that arrived first)."""
        batch: list[_Tile] = []
        while len(batch) < count and self.waiting:
            request = min(self.waiting, key=lambda r: r.served)  # min keeps the first (earliest) of ties
            tiles = self.waiting[request]
            batch.append(tiles.popleft())
            request.served += 1
            if not tiles:
                del self.waiting[request]
        self.size -= len(batch)
        return batch

    def drop(self, request: _Request) -> int:
        """Remove ``request``'s waiting tiles; returns how many."""
        tiles = self.waiting.pop(request, None)
        dropped = len(tiles) if tiles else 0
        self.size -= dropped
        return dropped


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
        self._lanes: dict[Lane, _LaneQueue] = {}
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
            for request in list(lane.waiting):
                lane.drop(request)
                if not request.future.done():
                    request.future.set_exception(DeadlineExceeded("service shutting down"))

    async def ping(self) -> None:
        """Always reachable while the batcher task runs."""

    async def status(self) -> str:
        """One line for /readyz."""
        return f"ok: embedded, {self.depth} tiles waiting"

    async def worker_count(self, max_age_s: float = 0.0) -> int | None:
        """None: the API process computes; there are no separate workers to count."""
        return None

    async def check_workers(self) -> None:
        """Nothing to check: the batcher task computes in this process."""

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: Deadline | float,
        graph: str = SERVE_GRAPH,
        sink: TileSink | None = None,
    ) -> TileResult:
        """Queue one request's tiles for ``graph`` (inputs ``(n, ...)`` each) and wait for their outputs
        ``(n, ...)`` (``(n, C, T/s, T/s)``; ``guide_sum`` ``(n, K)``) until ``deadline`` (or that many
        seconds); with ``sink``, each tile's outputs go there as its batch finishes instead. When the deadline
        passes or the caller is cancelled, the tiles still waiting are dropped."""
        budget = Deadline.of(deadline)
        budget.check("its tiles were being queued")
        count = len(next(iter(inputs.values())))
        depth = self.graph_depth(graph)
        if not self._policy.admit(depth, count):
            raise QueueFull(
                f"queue for {lane_ref(self.model_ref, graph)} holds {depth} tiles; {count} more "
                f"exceed the bound {self._policy.bound}"
            )
        shapes = tuple(sorted((name, tuple(array.shape[1:])) for name, array in inputs.items()))
        lane = self._lanes.setdefault((graph, shapes), _LaneQueue())
        now = self._clock()
        future: asyncio.Future[TileResult] = asyncio.get_running_loop().create_future()
        request = _Request(
            count,
            outputs,
            now + budget.remaining(),
            budget,
            future,
            {o: [None] * count for o in outputs} if sink is None else {},
            count,
            sink=sink,
        )
        lane.add(
            request,
            [_Tile(request, i, {n: a[i] for n, a in inputs.items()}, now) for i in range(count)],
        )
        self._set_depth(graph)
        self._wake.set()
        try:
            return await budget.run(asyncio.shield(future), "its tiles were queued or computing")
        finally:
            if not future.done():
                future.cancel()
            if lane.drop(request):
                self._set_depth(graph)

    async def _loop(self) -> None:
        while True:
            now = self._clock()
            ready: list[tuple[int, float, Lane, int]] = []
            waits: list[float] = []
            for key, lane in self._lanes.items():
                oldest = lane.oldest()
                decision = self._policy.decide(now, len(lane), oldest)
                if decision.take and oldest is not None:
                    ready.append((lane.least_served(), oldest, key, decision.take))
                elif decision.wait_s is not None:
                    waits.append(decision.wait_s)
            if not ready:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(waits, default=None))
                continue
            _, _, key, take = min(ready)
            batch = self._lanes[key].take(take)
            self._set_depth(key[0])
            await self._run(key[0], batch)

    async def _run(self, graph: str, batch: list[_Tile]) -> None:
        now = self._clock()
        live = []
        for tile in batch:
            if tile.request.future.done():
                continue
            if self._policy.expired(now, tile.request.deadline):
                tile.request.future.set_exception(tile.request.budget.exceeded("its tiles were queued"))
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
            if request.future.done():
                continue
            request.deliver(tile.index, {name: values[name][k] for name in request.outputs})
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                stacked_out = {name: np.stack(parts) for name, parts in request.results.items()}  # type: ignore[arg-type]
                request.future.set_result(TileResult(stacked_out, request.queue_wait_s, request.compute_s))
