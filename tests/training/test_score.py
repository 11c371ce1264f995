"""``dir-train score`` on a model_store entry and on centre crops (the run-folder path is in test_resume)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from modelstore.store import resolve_entry
from service.settings import DEFAULT_MODEL_STORE
from training.cli import main
from training.colour import colour_fit
from training.data import load_rgb_batch
from training.errors import CheckpointError
from training.evaluate.metrics import psnr
from training.isp import simulate, stable_seed
from training.models.checkpoint import system_from_entry
from training.train.data import list_images
from training.train.score import centre_crop, score_run, scores_path

ENTRY = resolve_entry(DEFAULT_MODEL_STORE, "dir-restore", "restore").path


def test_centre_crop_keeps_short_sides_whole() -> None:
    image = torch.arange(5 * 9, dtype=torch.float32).reshape(1, 1, 5, 9)
    out = centre_crop(image, 4)
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out, image[..., 0:4, 2:6])
    assert centre_crop(image, 7).shape == (1, 1, 5, 7), "a side shorter than the crop stays whole"


def test_entry_scores_match_a_manual_restore(dataset: Callable[[str], Path]) -> None:
    folder = dataset("cset5")
    record = score_run(ENTRY, ["full"], ["cset5"], limit=1, crop=64)
    row = record["psnr_db"]["full"]["cset5"]
    assert record["crop"] == 64 and record["protocol"] == "ablation" and row["images"] == 1

    first = list_images(folder)[0]
    clean = centre_crop(load_rgb_batch(first), 64)
    x = simulate(clean, preset="ablation", seed=[stable_seed("ablation", "cset5", first.name)]).degraded
    with torch.no_grad():
        restored = system_from_entry(ENTRY).eval().restore(x)
    assert row["input_psnr"] == pytest.approx(psnr(x, clean)[0], abs=1e-3)
    assert row["restored_psnr"] == pytest.approx(psnr(restored, clean)[0], abs=1e-3)
    fitted = psnr(colour_fit(restored, clean), clean)[0]
    assert row["restored_colour_fit_psnr"] == pytest.approx(fitted, abs=1e-3)
    assert row["input_colour_fit_psnr"] >= row["input_psnr"]
    assert scores_path(ENTRY) is None
    assert sorted(p.name for p in ENTRY.glob("scores*")) == [], "an entry's folder is never written"


def test_entry_refuses_a_variant_it_does_not_serve() -> None:
    with pytest.raises(CheckpointError, match="full method only"):
        score_run(ENTRY, ["r0_only"], ["cset5"], limit=1)


def test_cli_writes_an_entry_record_only_where_asked(
    dataset: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset("cset5")
    out = tmp_path / "entry-scores.json"
    args = ["score", str(ENTRY), "--datasets", "cset5", "--limit", "1", "--crop", "32", "--out", str(out)]
    assert main(args) == 0
    assert '"restored_psnr"' in capsys.readouterr().out
    assert out.is_file()
    assert main(["score", str(ENTRY), "--variant", "autoencoder", "--datasets", "cset5"]) == 2
    assert "full method only" in capsys.readouterr().err


def test_other_protocols_get_their_own_file(tmp_path: Path) -> None:
    assert scores_path(tmp_path) == tmp_path / "scores.json"
    assert scores_path(tmp_path, "train") == tmp_path / "scores-train.json"
    assert scores_path(tmp_path, "ablation", 128) == tmp_path / "scores-ablation-crop128.json"


def test_colour_fit_undoes_a_global_affine_colour_change(dataset: Callable[[str], Path]) -> None:
    clean = load_rgb_batch(list_images(dataset("cset5"))[0])[..., :96, :96]
    mix = torch.tensor([[0.8, 0.1, 0.0], [0.05, 0.7, 0.1], [0.0, 0.2, 0.6]])
    shifted = torch.einsum("ij,njhw->nihw", mix, clean) + torch.tensor([0.05, 0.1, 0.0]).view(1, 3, 1, 1)
    assert psnr(shifted, clean)[0] < 25
    assert psnr(colour_fit(shifted, clean), clean)[0] > 60


def test_colour_fit_never_adds_error_and_fits_each_image_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=generator)
    noisy = (clean + 0.2 * torch.randn(2, 3, 16, 16, generator=generator)).clamp(0, 1)
    both = colour_fit(noisy, clean)
    assert psnr(both[:1], clean[:1])[0] >= psnr(noisy[:1], clean[:1])[0]
    assert torch.allclose(both[1:], colour_fit(noisy[1:], clean[1:]))
