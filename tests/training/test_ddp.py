"""The ``torchrun`` / DistributedDataParallel path, run on CPU with the gloo backend (two processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.training.test_resume import MICRO_MODEL


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    raw = {
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "num_threads": 1,
        "log_every": 1,
        "eval_every": 2,
        "ckpt_every": 100,
        "data": {
            "train_dir": str(images),
            "val_images": 1,
            "val_crop": 32,
            "patch_size": 32,
            "batch_size": 2,
        },
        "model": MICRO_MODEL,
        "stage1": {"steps": 4, "warmup_steps": 1},
        "stage2": {"steps": 4, "warmup_steps": 1},
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def torchrun(stage: str, config: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "training.cli", stage, "--config", str(config), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_trains_both_stages(config_file: Path) -> None:
    run = config_file.parent / "run"
    torchrun("stage1", config_file)
    torchrun("stage2", config_file)
    for stage in ("stage1", "stage2"):
        ckpt = torch.load(run / f"{stage}.pt", map_location="cpu", weights_only=True)
        assert ckpt["step"] == 4
        assert all(torch.isfinite(v).all() for m in ckpt["modules"].values() for v in m.values())
        records = [json.loads(line) for line in (run / f"metrics-{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4], "only rank 0 writes the log"
