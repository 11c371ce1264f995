"""Streamed tiles: ``Restorer.infer`` stitches tile outputs as they arrive, and its result is bit-identical
to running every tile through the model and stitching them all at once (what the service did before it
streamed); progress reaches the total."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from service.api.state import ServiceState
from service.imaging import DecodedImage
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH, WINDOW_INPUT
from service.settings import Settings
from service.tiling import extract_tiles, owned_window, stitch_tiles, windows_mean
from tests.service.conftest import serve


def _batched(
    state: ServiceState, inputs: dict[str, np.ndarray], outputs: list[str], graph: str
) -> dict[str, np.ndarray]:
    """Every tile through ``graph`` in batches of ``max_batch`` -> each output ``(n, ...)``."""
    size, count = state.settings.max_batch, len(next(iter(inputs.values())))
    parts = [
        state.model.run({n: a[k : k + size] for n, a in inputs.items()}, outputs, graph)
        for k in range(0, count, size)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _whole_stitch(
    state: ServiceState, pixels: np.ndarray, outputs: list[str], mode: str
) -> dict[str, np.ndarray]:
    """The reference: all tiles' outputs stacked, then stitched at once with ``stitch_tiles``."""
    model, grid = state.model, state.restorer.plan(*pixels.shape[:2])
    tiles = extract_tiles(pixels, grid)
    if mode == "denoise":
        return {
            n: stitch_tiles(a, grid)
            for n, a in _batched(state, {model.input_name: tiles}, outputs, DENOISE_GRAPH).items()
        }
    assert model.guide is not None
    windows = np.array([owned_window(grid, k, model.guide.scale) for k in range(grid.count)], np.uint16)
    sums = _batched(
        state, {model.guide.inputs[0].name: tiles, WINDOW_INPUT: windows}, [GUIDE_SUM], GUIDE_GRAPH
    )
    mean = windows_mean(sums[GUIDE_SUM], windows)
    feed = {model.input_name: tiles, model.guide.mean_input: np.broadcast_to(mean, (grid.count, mean.size))}
    return {n: stitch_tiles(a, grid) for n, a in _batched(state, feed, outputs, SERVE_GRAPH).items()}


@pytest.mark.parametrize(("mode", "outputs"), [("full", ["restored", "r_plus"]), ("denoise", ["restored"])])
async def test_streamed_stitching_is_bit_identical(
    make_settings: Callable[..., Settings], mode: str, outputs: list[str]
) -> None:
    """A 150x230 image (tiles 64/16: 20 tiles) in batches of 3: the streamed result equals the whole-stitch
    reference byte for byte."""
    pixels = np.random.default_rng(3).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    async with serve(make_settings(max_batch=3)) as client:
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        seen: list[tuple[int, int]] = []
        image = DecodedImage(pixels, "png", 8)
        result = await state.restorer.infer(image, outputs, 60, mode, lambda *p: seen.append(p))
        expected = _whole_stitch(state, pixels, outputs, mode)
    assert result.tiles == state.restorer.plan(150, 230).count
    total = result.tiles * (2 if mode == "full" else 1)
    assert seen == [(done, total) for done in range(1, total + 1)]
    for name in outputs:
        assert result.arrays[name].dtype == np.float32
        assert result.arrays[name].tobytes() == expected[name].tobytes(), name


async def test_arenas_shrink_and_the_model_still_serves(make_settings: Callable[..., Settings]) -> None:
    """``shrink_arenas`` (after large requests) runs every session once and changes no later output."""
    pixels = np.random.default_rng(5).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    async with serve(make_settings(max_batch=3)) as client:
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        image = DecodedImage(pixels, "png", 8)
        before = await state.restorer.infer(image, ["restored"], 60)
        assert state.model.shrink_arenas() >= 0.0
        after = await state.restorer.infer(image, ["restored"], 60)
    assert before.arrays["restored"].tobytes() == after.arrays["restored"].tobytes()
