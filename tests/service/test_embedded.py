"""The embedded batcher: tiles of different requests share one batch and come back to their owners."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchPolicy
from service.embedded import EmbeddedQueue, Runner
from service.errors import InferenceError, QueueFull
from service.metrics import Metrics
from service.queue import GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH


def doubling_runner(batches: list[int], graphs: list[str] | None = None) -> Runner:
    def run(inputs: dict[str, np.ndarray], outputs: list[str], graph: str) -> dict[str, np.ndarray]:
        tiles = inputs["image"]
        batches.append(len(tiles))
        if graphs is not None:
            graphs.append(graph)
        return {name: tiles * 2 for name in outputs}

    return run


async def test_requests_share_a_batch() -> None:
    batches: list[int] = []
    # The batch runs only when full (the delay is ten minutes), so it must hold both requests' tiles.
    queue = EmbeddedQueue("m/1", doubling_runner(batches), BatchPolicy(6, 600.0, 100), Metrics())
    await queue.start()
    a = np.random.rand(3, 3, 8, 8).astype(np.float32)
    b = np.random.rand(3, 3, 8, 8).astype(np.float32)
    result_a, result_b = await asyncio.gather(
        queue.submit({"image": a}, ["restored"], 60), queue.submit({"image": b}, ["restored"], 60)
    )
    await queue.close()
    assert batches == [6]
    np.testing.assert_array_equal(result_a.outputs["restored"], a * 2)
    np.testing.assert_array_equal(result_b.outputs["restored"], b * 2)


async def test_graphs_have_their_own_lanes() -> None:
    """Tiles for the guide graph and for the serving graph never share a batch; each gets its inputs back."""
    batches: list[int] = []
    graphs: list[str] = []
    queue = EmbeddedQueue("m/1", doubling_runner(batches, graphs), BatchPolicy(8, 0.05, 100), Metrics())
    await queue.start()
    a = np.random.rand(3, 3, 8, 8).astype(np.float32)
    b = np.random.rand(2, 3, 8, 8).astype(np.float32)
    mean = np.ones((2, 4), dtype=np.float32)
    result_a, result_b = await asyncio.gather(
        queue.submit({"image": a}, [GUIDE_SUM], 60, GUIDE_GRAPH),
        queue.submit({"image": b, "guide_mean": mean}, ["restored"], 60, SERVE_GRAPH),
    )
    await queue.close()
    assert sorted(zip(graphs, batches, strict=True)) == [(GUIDE_GRAPH, 3), (SERVE_GRAPH, 2)]
    np.testing.assert_array_equal(result_a.outputs[GUIDE_SUM], a * 2)
    np.testing.assert_array_equal(result_b.outputs["restored"], b * 2)


async def test_failing_batch_fails_its_requests_not_the_batcher() -> None:
    calls = 0

    def flaky(inputs: dict[str, np.ndarray], outputs: list[str], graph: str) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device lost")
        return {name: inputs["image"] for name in outputs}

    queue = EmbeddedQueue("m/1", flaky, BatchPolicy(4, 0.0, 100), Metrics())
    await queue.start()
    tiles = np.zeros((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(InferenceError, match="device lost"):
        await queue.submit({"image": tiles}, ["restored"], 60)
    again = await queue.submit({"image": tiles}, ["restored"], 60)
    await queue.close()
    assert again.outputs["restored"].shape == (2, 3, 8, 8)


async def test_tile_sides_have_their_own_lanes_and_share_the_bound() -> None:
    """Tiles of different sides never share a batch; the queue bound counts a graph's tiles of every side."""
    batches: list[int] = []
    queue = EmbeddedQueue("m/1", doubling_runner(batches), BatchPolicy(8, 0.05, 6), Metrics())
    await queue.start()
    small = np.random.rand(3, 3, 8, 8).astype(np.float32)
    large = np.random.rand(2, 3, 16, 16).astype(np.float32)
    first = asyncio.create_task(queue.submit({"image": small}, ["restored"], 60))
    second = asyncio.create_task(queue.submit({"image": large}, ["restored"], 60))
    await asyncio.sleep(0)
    assert queue.graph_depth(SERVE_GRAPH) == 5
    with pytest.raises(QueueFull, match="holds 5 tiles; 2 more exceed the bound 6"):
        await queue.submit({"image": large}, ["restored"], 60)
    result_small, result_large = await asyncio.gather(first, second)
    await queue.close()
    assert sorted(batches) == [2, 3]
    np.testing.assert_array_equal(result_small.outputs["restored"], small * 2)
    np.testing.assert_array_equal(result_large.outputs["restored"], large * 2)
