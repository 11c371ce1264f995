"""``--steps`` / ``--time-limit`` (the step count replaced or fitted to a time budget) and worker batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.training.test_resume import image_dir, micro  # noqa: F401  (fixture re-export)
from training.cli import main
from training.errors import ConfigError
from training.train.config import config_to_dict
from training.train.data import StepBatches, batch_presets, iterate_batches, load_store
from training.train.loop import PROBE_STEPS, budget_steps, train_stage


def test_budget_steps_fits_remaining_time_and_clamps() -> None:
    assert budget_steps(10_000, 60, rate=10.0, remaining_s=100.0) == 60 + int(100.0 * 10.0 * 0.92)
    assert budget_steps(500, 60, rate=10.0, remaining_s=100.0) == 500
    assert budget_steps(10_000, 60, rate=10.0, remaining_s=-5.0) == 60


def test_steps_override_is_recorded(image_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = micro(image_dir, tmp_path / "run")
    ckpt = torch.load(train_stage(cfg, "stage1", progress=False, steps=3), weights_only=True)
    assert (ckpt["step"], ckpt["steps"], ckpt["config"]["stage1"]["steps"]) == (3, 3, 3)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["stage1"]["steps"] == 3


def test_time_limit_chooses_steps_and_stage2_accepts_them(image_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = micro(image_dir, tmp_path / "run", stage1={"steps": 5000, "warmup_steps": 2}, log_every=50)
    # A budget already spent at the probe: the stage ends right after it, with a consistent checkpoint.
    ckpt = torch.load(train_stage(cfg, "stage1", progress=False, time_limit_s=1e-3), weights_only=True)
    assert ckpt["step"] == ckpt["steps"] == PROBE_STEPS
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["stage1"]["steps"] == PROBE_STEPS
    # Stage II refuses an unfinished Stage I; this budgeted one counts as finished.
    stage2 = torch.load(train_stage(cfg, "stage2", progress=False, steps=2), weights_only=True)
    assert stage2["step"] == 2


def test_time_limit_with_resume_is_a_clear_error(
    image_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg_path = tmp_path / "micro.yaml"
    cfg = micro(image_dir, tmp_path / "run")
    cfg_path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert main(["stage1", "--config", str(cfg_path), "--resume", "--time-limit", "60", "--no-progress"]) == 2
    assert "fresh run" in capsys.readouterr().err


def test_worker_batches_equal_in_process_batches(image_dir: Path) -> None:  # noqa: F811
    store = load_store(image_dir, 1, 32)
    cpu = torch.device("cpu")
    for views in (1, 2):
        data = StepBatches(store.train, 3, 32, "train", views=views, base_seed=7, device=cpu)
        here = iterate_batches(data, 5, workers=0, device=cpu)
        there = iterate_batches(data, 5, workers=2, device=cpu)
        for _ in range(4):
            a, b = next(here), next(there)
            assert len(a) == len(b) == 1 + views
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        there.close()
    # A batch depends on its step index alone.
    assert torch.equal(data[9][0], data[9][0]) and not torch.equal(data[9][0], data[10][0])


def test_a_preset_mixture_draws_each_image_from_its_names_reproducibly(image_dir: Path) -> None:  # noqa: F811
    assert batch_presets("train", 4, torch.Generator().manual_seed(0)) == "train"
    drawn = batch_presets("ablation+lowlight", 64, torch.Generator().manual_seed(0))
    assert drawn == batch_presets("ablation+lowlight", 64, torch.Generator().manual_seed(0))
    assert set(drawn) == {"ablation", "lowlight"}
    store = load_store(image_dir, 1, 32)
    data = StepBatches(
        store.train, 4, 32, "ablation+lowlight", views=1, base_seed=7, device=torch.device("cpu")
    )
    assert torch.equal(data[3][1], data[3][1])
    # The clean patches are drawn before the mixture's choice: they equal a plain preset's, the views do not.
    plain = StepBatches(store.train, 4, 32, "ablation", views=1, base_seed=7, device=torch.device("cpu"))
    assert not torch.equal(data[3][1], plain[3][1])
    assert torch.equal(plain[3][0], data[3][0])


def test_time_limit_is_refused_under_torchrun(
    image_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="single process"):
        train_stage(micro(image_dir, tmp_path / "run"), "stage1", progress=False, time_limit_s=60)
