"""Deadlines, cancellation and fair scheduling in the embedded queue and the app: a costly request next to
small ones, a client that goes away, a deadline that passes while decoding or while tiles wait."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import service.api.work
from service.batching import BatchPolicy
from service.deadline import Deadline
from service.embedded import EmbeddedQueue
from service.errors import DeadlineExceeded
from service.metrics import Metrics
from service.queue import GUIDE_GRAPH, SERVE_GRAPH, TileResult, lane_ref
from service.settings import Settings
from tests.service.conftest import noise_png, restore_latencies, restore_scope, serve


class GatedRunner:
    """Records each batch's tile values; every call waits until ``gate`` is set (then keeps it set)."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(
        self, inputs: dict[str, np.ndarray], outputs: list[str], graph: str
    ) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        tiles = inputs["image"]
        self.batches.append([float(t.flat[0]) for t in tiles])
        return {name: tiles for name in outputs}


def tiles_of(value: float, count: int) -> dict[str, np.ndarray]:
    """``count`` 1-pixel tiles holding ``value`` (a request's tag in the runner's record)."""
    return {"image": np.full((count, 1, 1, 1), value, dtype=np.float32)}


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_small_request_goes_into_the_next_batch_behind_a_costly_one() -> None:
    """A 40-tile request queued first; a 3-tile request arriving while its first batch runs is served in
    the next batch (fewest tiles served first), not after the 40 (FIFO)."""
    runner = GatedRunner()
    queue = EmbeddedQueue("m/1", runner, BatchPolicy(4, 0.0, 100), Metrics())
    await queue.start()
    costly = asyncio.create_task(queue.submit(tiles_of(1.0, 40), ["restored"], 60))
    await asyncio.to_thread(runner.entered.wait, 10)  # batch 1 (4 costly tiles) is running
    small = asyncio.create_task(queue.submit(tiles_of(2.0, 3), ["restored"], 60))
    await asyncio.sleep(0.01)
    runner.gate.set()
    await asyncio.gather(costly, small)
    await queue.close()
    assert runner.batches[0] == [1.0] * 4
    assert sorted(runner.batches[1]) == [1.0, 2.0, 2.0, 2.0]
    assert sum(len(b) for b in runner.batches) == 43


async def test_small_request_in_another_lane_is_not_starved() -> None:
    """Lanes are picked by the same rule: a 1-tile guide-graph request beats a serving-graph lane full of a
    costly request's older tiles."""
    runner = GatedRunner()
    queue = EmbeddedQueue("m/1", runner, BatchPolicy(4, 0.0, 100), Metrics())
    await queue.start()
    costly = asyncio.create_task(queue.submit(tiles_of(1.0, 40), ["restored"], 60, SERVE_GRAPH))
    await asyncio.to_thread(runner.entered.wait, 10)
    small = asyncio.create_task(queue.submit(tiles_of(2.0, 1), ["restored"], 60, GUIDE_GRAPH))
    await asyncio.sleep(0.01)
    runner.gate.set()
    await asyncio.gather(costly, small)
    await queue.close()
    assert runner.batches[1] == [2.0]


async def test_cancelled_request_tiles_are_dropped() -> None:
    """A caller cancelled (its client went away) while its tiles wait: they leave the queue at once and
    never reach the model."""
    runner = GatedRunner()
    queue = EmbeddedQueue("m/1", runner, BatchPolicy(4, 0.0, 100), Metrics())
    await queue.start()
    first = asyncio.create_task(queue.submit(tiles_of(1.0, 4), ["restored"], 60))
    await asyncio.to_thread(runner.entered.wait, 10)
    doomed = asyncio.create_task(queue.submit(tiles_of(2.0, 40), ["restored"], 60))
    await wait_for(lambda: queue.depth == 40)
    doomed.cancel()
    await wait_for(doomed.done)
    assert queue.depth == 0
    runner.gate.set()
    await first
    later = await queue.submit(tiles_of(3.0, 2), ["restored"], 60)
    await queue.close()
    assert later.outputs["restored"].shape == (2, 1, 1, 1)
    assert all(value != 2.0 for batch in runner.batches for value in batch)


async def test_expired_request_tiles_are_dropped_and_504_names_the_configured_deadline() -> None:
    """A deadline passing while tiles wait: 504 naming the configured budget (not what was left of it), the
    waiting tiles dropped at once, never computed."""
    runner = GatedRunner()
    queue = EmbeddedQueue("m/1", runner, BatchPolicy(4, 0.0, 100), Metrics())
    await queue.start()
    first = asyncio.create_task(queue.submit(tiles_of(1.0, 4), ["restored"], 60))
    await asyncio.to_thread(runner.entered.wait, 10)
    deadline = Deadline.after(60.0, spent_s=59.8)  # a 60 s request with 0.2 s left
    with pytest.raises(DeadlineExceeded, match=r"within its 60 s deadline \(DIR_REQUEST_TIMEOUT_S\)"):
        await queue.submit(tiles_of(2.0, 40), ["restored"], deadline)
    assert queue.depth == 0
    runner.gate.set()
    result: TileResult = await first
    await queue.close()
    assert result.outputs["restored"].shape == (4, 1, 1, 1)
    assert all(value != 2.0 for batch in runner.batches for value in batch)


async def test_small_requests_keep_their_latency_next_to_a_costly_one(
    make_settings: Callable[..., Settings],
) -> None:
    """The fixture model, one 1600 x 1600 request (hundreds of tiles per pass) and small 1-tile requests sent
    one after another while it computes: their median latency stays within 2x the usual (alone) median
    (plus 50 ms of slack for a loaded machine); FIFO made them wait for the costly request's whole pass."""
    small, costly_body = noise_png(100, 100), noise_png(1600, 1600, 1)
    async with serve(make_settings(max_batch=2)) as client:
        state: Any = client.app.state.service  # type: ignore[attr-defined]
        await client.post("/v1/restore", content=small)
        usual = await restore_latencies(client, small)
        costly = asyncio.create_task(client.post("/v1/restore", content=costly_body))
        await wait_for(lambda: state.queue.depth > 100)
        beside = await restore_latencies(client, small)
        still_queued = state.queue.depth
        assert (await costly).status_code == 200
    assert statistics.median(beside) <= 2 * statistics.median(usual) + 0.05, (usual, beside)
    assert still_queued > 0, "the costly request finished before the small ones: nothing was shown"


async def test_deadline_covers_decoding(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding slower than the whole deadline: 504 at the deadline (not when decoding ends), naming the
    configured deadline."""
    slow = service.api.work.decode_image

    def slow_decode(*args: Any) -> Any:
        time.sleep(2.5)
        return slow(*args)

    monkeypatch.setattr(service.api.work, "decode_image", slow_decode)
    async with serve(make_settings(request_timeout_s=0.1)) as client:
        started = time.perf_counter()
        response = await client.post("/v1/restore", content=noise_png(64, 64))
        elapsed = time.perf_counter() - started
    assert response.status_code == 504
    assert "within its 0.1 s deadline" in response.json()["message"]
    assert "decoding" in response.json()["message"]
    assert elapsed < 1.5  # at the 0.1 s deadline, not when decoding ends (2.5 s); margin for a loaded machine


async def test_disconnected_client_tiles_are_dropped(make_settings: Callable[..., Settings]) -> None:
    """A client that disconnects mid-request (raw ASGI: body, then http.disconnect once batches run): its
    request is cancelled, its waiting tiles leave the queue and the model stops computing them."""
    body = noise_png(1500, 1500, 2)
    async with serve(make_settings(max_batch=1)) as client:
        app: Any = client.app  # type: ignore[attr-defined]
        state = app.state.service
        batches = state.metrics.batch_size
        gone = asyncio.Event()
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        scope = restore_scope(headers)

        def computed() -> float:
            lanes = [lane_ref(state.model.ref, graph) for graph in state.model.graphs]
            return float(sum(batches.labels(lane)._sum.get() for lane in lanes))

        call = asyncio.create_task(app(scope, receive, send))
        await wait_for(lambda: computed() >= 3)
        gone.set()
        await asyncio.wait_for(call, 10)
        at_disconnect = computed()
        await asyncio.sleep(0.3)
        after = computed()
        depth = state.queue.depth
    total = state.restorer.plan(1500, 1500).count
    assert sent[0]["status"] == 499
    assert depth == 0
    assert after <= at_disconnect + 1  # at most the batch already running
    assert after < total  # not even one pass of the image's tiles
