"""The embedded backend: an asyncio batcher inside the API process (the default; no Redis needed).

One lane per model: tiles wait in a deque; a single task applies ``BatchPolicy`` with the injected clock,
runs each batch in a worker thread (ONNX Runtime releases the GIL) and hands outputs back per request.
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
from service.queue import TileResult
from service.tiling import stack_tiles

Runner = Callable[[np.ndarray, list[str]], dict[str, np.ndarray]]


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
    pixels: np.ndarray
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
        self._tiles: deque[_Tile] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Tiles waiting (not yet in a running batch)."""
        return len(self._tiles)

    async def start(self) -> None:
        """Start the batcher task."""
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.model_ref}")

    async def close(self) -> None:
        """Stop the batcher task; waiting requests are failed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._tiles:
            tile = self._tiles.popleft()
            if not tile.request.future.done():
                tile.request.future.set_exception(DeadlineExceeded("service shutting down"))

    async def ping(self) -> None:
        """Always reachable while the batcher task runs."""

    async def status(self) -> str:
        """One line for /readyz."""
        return f"ok: embedded, {self.depth} tiles waiting"

    async def submit(self, tiles: np.ndarray, outputs: list[str], timeout_s: float) -> TileResult:
        """Queue ``tiles`` (n, 3, T, T) and wait for their outputs (n, C, T/s, T/s)."""
        count = int(tiles.shape[0])
        if not self._policy.admit(self.depth, count):
            raise QueueFull(
                f"queue for {self.model_ref} holds {self.depth} tiles; {count} more exceed the bound "
                f"{self._policy.bound}"
            )
        now = self._clock()
        future: asyncio.Future[TileResult] = asyncio.get_running_loop().create_future()
        request = _Request(
            count, outputs, now + timeout_s, future, {o: [None] * count for o in outputs}, count
        )
        self._tiles.extend(_Tile(request, i, tiles[i], now) for i in range(count))
        self._metrics.queue_depth.labels(self.model_ref).set(self.depth)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise DeadlineExceeded(f"request not finished within its {timeout_s:.3g} s deadline") from exc

    async def _loop(self) -> None:
        while True:
            decision = self._policy.decide(
                self._clock(), self.depth, self._tiles[0].enqueued if self._tiles else None
            )
            if decision.take == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), decision.wait_s)
                continue
            batch = [self._tiles.popleft() for _ in range(decision.take)]
            self._metrics.queue_depth.labels(self.model_ref).set(self.depth)
            await self._run(batch)

    async def _run(self, batch: list[_Tile]) -> None:
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
        for tile in live:
            wait = now - tile.enqueued
            tile.request.queue_wait_s = max(tile.request.queue_wait_s, wait)
            self._metrics.queue_wait.labels(self.model_ref).observe(wait)
        self._metrics.batch_size.labels(self.model_ref).observe(len(live))
        stacked = stack_tiles([t.pixels for t in live])
        started = time.perf_counter()
        try:
            values = await asyncio.to_thread(self._runner, stacked, outputs)
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
        self._metrics.compute.labels(self.model_ref).observe(elapsed)
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
