"""Tiling: layout, exact reconstruction, and tiled vs whole-image model output on a real image."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.errors import BadInput
from service.store import ModelEntry
from service.tiling import extract_tiles, plan_tiles, stitch_tiles


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two arrays in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 300), (64, 64), (65, 130), (480, 500)])
def test_plan_covers_the_padded_image(h: int, w: int) -> None:
    grid = plan_tiles(h, w, tile=64, overlap=16, multiple=4)
    assert grid.padded_height >= max(h, 64) and grid.padded_height % 4 == 0
    assert grid.ys[0] == 0 and grid.ys[-1] + 64 == grid.padded_height
    assert all(b - a <= 48 for a, b in zip(grid.ys, grid.ys[1:], strict=False))
    assert all(y % 4 == 0 for y in grid.ys + grid.xs)


def test_plan_rejects_misaligned_tiles() -> None:
    with pytest.raises(BadInput):
        plan_tiles(100, 100, tile=62, overlap=16, multiple=4)
    with pytest.raises(BadInput):
        plan_tiles(100, 100, tile=64, overlap=64, multiple=4)


def test_identity_tiles_stitch_back_exactly(dataset: Callable[[str], Path]) -> None:
    image = np.asarray(Image.open(dataset("cset14") / "zebra.png").convert("RGB"), dtype=np.float32) / 255
    grid = plan_tiles(*image.shape[:2], tile=64, overlap=16, multiple=4)
    stitched = stitch_tiles(extract_tiles(image, grid), grid)
    np.testing.assert_allclose(stitched.transpose(1, 2, 0), image, atol=1e-6)


def test_downscaled_outputs_stitch_to_ceil_size() -> None:
    grid = plan_tiles(101, 70, tile=64, overlap=16, multiple=4)
    latents = np.ones((grid.count, 8, 16, 16), dtype=np.float32)
    out = stitch_tiles(latents, grid)
    assert out.shape == (8, 26, 18)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def degraded(clean_path: Path, quality: int = 20) -> np.ndarray:
    """A real image through JPEG at ``quality``: (H, W, 3) float32 sRGB in [0, 1]."""
    buffer = io.BytesIO()
    Image.open(clean_path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255


def run_tiled_and_whole(
    onnx_path: Path, image: np.ndarray, tile: int, overlap: int, multiple: int
) -> tuple[np.ndarray, np.ndarray]:
    """The model's ``restored`` output on overlapping tiles (stitched) and on the whole (padded) image."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    grid = plan_tiles(*image.shape[:2], tile=tile, overlap=overlap, multiple=multiple)
    tiles = extract_tiles(image, grid)
    outs = np.concatenate(
        [session.run(["restored"], {"image": tiles[i : i + 8]})[0] for i in range(0, len(tiles), 8)]
    )
    tiled = stitch_tiles(outs, grid).transpose(1, 2, 0)
    pad_h, pad_w = -image.shape[0] % multiple, -image.shape[1] % multiple
    full = np.pad(image.transpose(2, 0, 1), ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")[None]
    whole = session.run(["restored"], {"image": full})[0][0][:, : image.shape[0], : image.shape[1]]
    return tiled, whole.transpose(1, 2, 0)


def test_tiled_matches_whole_image_within_0_1_db(fixture_store: Path, dataset: Callable[[str], Path]) -> None:
    """JPEG-degraded monarch, fixture model on 64-px tiles vs whole image, both scored against the clean."""
    clean_path = dataset("cset14") / "monarch.png"
    clean = np.asarray(Image.open(clean_path).convert("RGB"), dtype=np.float32) / 255
    onnx_path = fixture_store / "dir-restore" / "0.0.1" / "model.onnx"
    tiled, whole = run_tiled_and_whole(onnx_path, degraded(clean_path), tile=64, overlap=16, multiple=4)
    assert abs(psnr(tiled, clean) - psnr(whole, clean)) < 0.1
    assert psnr(tiled, whole) > 50


def test_committed_model_tiled_matches_whole_image_within_0_1_db(
    served_entry: ModelEntry, fixture_store: Path, dataset: Callable[[str], Path], tmp_path: Path
) -> None:
    """The committed default model with its manifest's tile geometry, on a 480x352 crop of monarch."""
    if served_entry.path.parent.parent == fixture_store:
        pytest.skip("no committed dir-restore entry in model_store/ yet")
    tile = served_entry.manifest.tile
    assert tile is not None
    crop = tmp_path / "monarch.png"
    Image.open(dataset("cset14") / "monarch.png").crop((100, 80, 580, 432)).save(crop)
    clean = np.asarray(Image.open(crop).convert("RGB"), dtype=np.float32) / 255
    onnx_path = served_entry.path / served_entry.manifest.onnx_file
    tiled, whole = run_tiled_and_whole(
        onnx_path, degraded(crop), tile.size, tile.overlap, served_entry.manifest.size_multiple
    )
    assert abs(psnr(tiled, clean) - psnr(whole, clean)) < 0.1
