"""Restore modes on the embedded backend: ``full`` (DiR), ``denoise`` (colour kept) and the default mode."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from modelstore.errors import ModelStoreError
from modelstore.store import ModelEntry
from service.settings import Settings
from tests.service.conftest import serve
from tests.service.fixture_model import build_entry


def _pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32) / 255.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((a - b) ** 2)))


async def test_denoise_mode_runs_the_denoise_graph_on_every_tile(
    make_settings: Callable[..., Settings], fixture_store: Path, dataset: Callable[[str], Path]
) -> None:
    """Tiled through the API (tiles 64/16, 20 tiles) equals the denoise graph on the whole image."""
    body = (dataset("cset14") / "face.png").read_bytes()  # 276x276
    async with serve(make_settings()) as client:
        denoised = await client.post("/v1/restore?mode=denoise&format=png", content=body)
        full = await client.post("/v1/restore?format=png", content=body)
        models = (await client.get("/v1/models")).json()
    assert denoised.status_code == 200, denoised.text
    assert denoised.headers["x-restore-mode"] == "denoise" and full.headers["x-restore-mode"] == "full"
    assert models["restore_modes"] == ["full", "denoise"]
    assert models["restore_tiles"] == [64, 128] and models["restore_tile_overlap"] == 16
    source = _pixels(body)
    session = ort.InferenceSession(
        str(fixture_store / "dir-restore" / "0.0.1" / "denoise.onnx"), providers=["CPUExecutionProvider"]
    )
    whole = session.run(None, {"image": np.ascontiguousarray(source.transpose(2, 0, 1)[None])})[0]
    expected = np.round(np.clip(whole[0].transpose(1, 2, 0), 0.0, 1.0) * 255.0) / 255.0
    assert np.abs(_pixels(denoised.content) - expected).max() <= 1.0 / 255.0 + 1e-6
    assert np.abs(_pixels(full.content) - _pixels(denoised.content)).max() > 2.0 / 255.0


async def test_unknown_mode_and_a_model_without_denoise_are_422(
    make_settings: Callable[..., Settings], tmp_path: Path, dataset: Callable[[str], Path]
) -> None:
    body = (dataset("cset14") / "face.png").read_bytes()
    async with serve(make_settings()) as client:
        bogus = await client.post("/v1/restore?mode=sharpen", content=body)
    assert bogus.status_code == 422 and "mode" in bogus.json()["message"]
    build_entry(tmp_path / "store", denoise=False)
    async with serve(make_settings(model_store=tmp_path / "store")) as client:
        missing = await client.post("/v1/restore?mode=denoise", content=body)
        models = (await client.get("/v1/models")).json()
    assert missing.status_code == 422
    assert "restore mode 'denoise' is not offered by dir-restore/0.0.1" in missing.json()["message"]
    assert models["restore_modes"] == ["full"]


async def test_requests_without_a_mode_run_the_configured_default(
    make_settings: Callable[..., Settings], tmp_path: Path, dataset: Callable[[str], Path]
) -> None:
    """DIR_RESTORE_MODE: auto = denoise when the entry has the graph, else full; explicit values as given;
    a mode the entry lacks stops the service at start with a message naming the setting."""
    small_png = (dataset("cset14") / "face.png").read_bytes()
    async with serve(make_settings(restore_mode="auto")) as client:
        auto = await client.post("/v1/restore", content=small_png)
        chosen = await client.post("/v1/restore?mode=full", content=small_png)
        models = (await client.get("/v1/models")).json()
    assert auto.status_code == 200 and auto.headers["x-restore-mode"] == "denoise"
    assert chosen.headers["x-restore-mode"] == "full" and models["default_restore_mode"] == "denoise"
    async with serve(make_settings(restore_mode="full")) as client:
        full = await client.post("/v1/restore", content=small_png)
    assert full.headers["x-restore-mode"] == "full"
    build_entry(tmp_path / "store", denoise=False)
    async with serve(make_settings(model_store=tmp_path / "store", restore_mode="auto")) as client:
        fallback = await client.post("/v1/restore", content=small_png)
        assert (await client.get("/v1/models")).json()["default_restore_mode"] == "full"
    assert fallback.headers["x-restore-mode"] == "full"
    with pytest.raises(
        ModelStoreError, match="DIR_RESTORE_MODE=denoise: restore mode 'denoise' is not offered"
    ):
        async with serve(make_settings(model_store=tmp_path / "store", restore_mode="denoise")):
            pass
    assert Settings().restore_mode == "auto"


async def test_committed_model_denoise_mode_gains_on_real_camera_noise(
    api_settings: Callable[..., Settings], served_entry: ModelEntry, dataset: Callable[[str], Path]
) -> None:
    """cc15 (real ISO 3200 noise, correctly rendered): denoise keeps the colour and beats the input (3.1.0's
    untrained D*(DfR(x)) gained +0.9 dB here, 3.2.0's trained denoiser +3.4); full
    DiR "corrects" colour and tone the camera got right and falls far below it (docs/TRAINING.md)."""
    if "denoise" not in served_entry.manifest.extra:
        pytest.skip(f"{served_entry.ref} has no denoise graph")
    folder = dataset("cc15")
    box = (128, 128, 384, 384)
    noisy = Image.open(folder / "d800_iso3200_1_real.png").convert("RGB").crop(box)
    clean = np.asarray(Image.open(folder / "d800_iso3200_1_mean.png").convert("RGB").crop(box)) / 255.0
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    async with serve(api_settings()) as client:
        denoised = await client.post("/v1/restore?mode=denoise&format=png", content=buffer.getvalue())
        full = await client.post("/v1/restore?format=png", content=buffer.getvalue())
    assert denoised.status_code == 200 and full.status_code == 200
    source = np.asarray(noisy, dtype=np.float32) / 255.0
    gain = _psnr(_pixels(denoised.content), clean) - _psnr(source, clean)
    assert gain > 2.0, f"denoise mode gains {gain:.2f} dB on this cc15 crop (3.2.0: +3.41 dB when written)"
    assert _psnr(_pixels(full.content), clean) < _psnr(source, clean)
