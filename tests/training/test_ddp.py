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

from tests.training.test_resume import micro
from training.train.config import config_to_dict


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The micro config of test_resume (4 steps per stage) as a YAML file, with its own six images."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    steps = {"steps": 4, "warmup_steps": 1}
    cfg = micro(images, tmp_path / "run", stage1=steps, stage2=steps)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
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
