"""``--resume`` continues bit for bit; the metrics log, plot and CLI work on a micro run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from training.cli import main
from training.train.config import TrainConfig, config_from_dict
from training.train.loop import train_stage

MICRO_MODEL = {"latent_channels": 4, "widths": [8, 8, 12], "align_width": 8, "disc_width": 8}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six random 40x48 PNGs (no shared data needed)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def micro(image_dir: Path, run_dir: Path, **extra: Any) -> TrainConfig:
    raw = {
        "run_dir": str(run_dir),
        "device": "cpu",
        "num_threads": 1,
        "log_every": 1,
        "eval_every": 2,
        "ckpt_every": 100,
        "data": {
            "train_dir": str(image_dir),
            "val_images": 1,
            "val_crop": 32,
            "patch_size": 32,
            "batch_size": 2,
        },
        "model": MICRO_MODEL,
        "stage1": {"steps": 6, "warmup_steps": 2},
        "stage2": {"steps": 6, "warmup_steps": 2},
        "loss": {"kl_warmup_steps": 3},
        **extra,
    }
    return config_from_dict(raw)


def _weights(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = _weights(a), _weights(b)
    assert ca["step"] == cb["step"]
    for name, sd in ca["modules"].items():
        for k, t in sd.items():
            assert torch.equal(t, cb["modules"][name][k]), f"{name}.{k} differs"
    for k, st in ca["optimizer"]["state"].items():
        for key, t in st.items():
            assert torch.equal(t, cb["optimizer"]["state"][k][key]), f"optimizer {k}.{key} differs"
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])


def _losses(log: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def test_resume_is_bit_for_bit_for_both_stages(image_dir: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg_a, cfg_b = micro(image_dir, straight), micro(image_dir, resumed)
    a1 = train_stage(cfg_a, "stage1", progress=False)
    train_stage(cfg_b, "stage1", stop_at=3, progress=False)
    assert _weights(resumed / "stage1.pt")["step"] == 3
    b1 = train_stage(cfg_b, "stage1", resume=True, progress=False)
    _assert_same_checkpoint(a1, b1)
    assert _losses(straight / "metrics-stage1.jsonl") == _losses(resumed / "metrics-stage1.jsonl")

    a2 = train_stage(cfg_a, "stage2", progress=False)
    train_stage(cfg_b, "stage2", stop_at=4, progress=False)
    b2 = train_stage(cfg_b, "stage2", resume=True, progress=False)
    _assert_same_checkpoint(a2, b2)
    assert _losses(straight / "metrics-stage2.jsonl") == _losses(resumed / "metrics-stage2.jsonl")


def test_cli_stage2_needs_a_finished_stage1(
    image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = micro(image_dir, tmp_path / "run")
    train_stage(cfg, "stage1", stop_at=2, progress=False)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        json.dumps({k: v for k, v in _weights(tmp_path / "run" / "stage1.pt")["config"].items()})
    )
    assert main(["stage2", "--config", str(cfg_file), "--no-progress"]) == 2
    assert "finish it first" in capsys.readouterr().err


def test_cli_ablation_variants_plot_and_metrics(image_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = micro(image_dir, run)
    train_stage(cfg, "stage1", progress=False)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(_weights(run / "stage1.pt")["config"]))
    assert main(["ablation", "--config", str(cfg_file), "--no-progress"]) == 0
    for variant in ("no_pilot", "r0_only", "autoencoder"):
        assert (run / f"ablation-{variant}.pt").is_file()
        rows = _losses(run / f"metrics-ablation-{variant}.jsonl")
        assert rows[-1]["step"] == 6 and "val_psnr" in rows[-1] and "val_input_psnr" in rows[-1]
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    record = _losses(run / "metrics-stage1.jsonl")[-1]
    assert {"loss", "dir_mi", "dir_d_akl", "dir_prior_kl", "dfr_mi", "dfr_l1", "dfr_prior_kl", "lr"} <= set(
        record
    )


def test_copying_a_run_keeps_it_loadable(image_dir: Path, tmp_path: Path) -> None:
    from training.models import load_system

    run = tmp_path / "run"
    cfg = micro(image_dir, run)
    train_stage(cfg, "stage1", progress=False)
    train_stage(cfg, "stage2", progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    system = load_system(moved)
    assert system.variant == "full"
    assert system.restore(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)


def test_score_writes_psnr_of_restored_and_input(
    image_dir: Path, tmp_path: Path, dataset: Callable[[str], Path]
) -> None:
    from training.train.score import score_run

    dataset("cset5")
    run = tmp_path / "run"
    cfg = micro(image_dir, run)
    train_stage(cfg, "stage1", progress=False)
    train_stage(cfg, "stage2", progress=False)
    record = score_run(run, ["full"], ["cset5"], limit=1)
    row = record["psnr_db"]["full"]["cset5"]
    assert row["images"] == 1 and row["restored_psnr"] > 0 and row["input_psnr"] > 0
    assert 0 < row["ceiling_psnr"] < 100, "D*(DfR(clean)) ceiling recorded for the full method"
    assert json.loads((run / "scores.json").read_text())["protocol"] == "ablation"
    score_run(run, ["full"], ["cset5"], preset="lowlight", limit=1, crop=32)
    other = json.loads((run / "scores-lowlight-crop32.json").read_text())
    assert (other["protocol"], other["crop"]) == ("lowlight", 32)
    kept = json.loads((run / "scores.json").read_text())
    assert (kept["protocol"], kept["crop"], kept["psnr_db"]) == ("ablation", None, record["psnr_db"])
