"""The ``torchrun`` / DistributedDataParallel path, run on CPU with the gloo backend (two processes): both
stages train, only rank 0 writes, and after the last step both ranks hold the checkpoint's weights."""

from __future__ import annotations

import json
import os
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

ROOT = Path(__file__).resolve().parents[2]


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


#: Run by each torchrun process: ``dir-train`` with every module DistributedDataParallel wraps recorded, whose
#: weights the process saves to ``OUT/rank<RANK>.pt`` once training returned (argv: OUT, then dir-train's).
RECORDING_RANK = """
import os, sys
import torch
from torch import nn

wrapped = []


class Recorded(nn.parallel.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        wrapped.append(module)


nn.parallel.DistributedDataParallel = Recorded
from training.cli import main

code = main(sys.argv[2:])
(module,) = wrapped
torch.save(module.state_dict(), os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".pt"))
sys.exit(code)
"""


def torchrun(stage: str, config: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``stage`` on two processes; the weights each rank holds at the end (rank 0's, rank 1's)."""
    out = config.parent / f"ranks-{stage}"
    out.mkdir()
    script = config.parent / "recording_rank.py"
    script.write_text(RECORDING_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    cmd += [str(out), stage, "--config", str(config), "--no-progress"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1))
    return rank0, rank1


def test_two_process_ddp_trains_both_stages(config_file: Path) -> None:
    run = config_file.parent / "run"
    ranks = {stage: torchrun(stage, config_file) for stage in ("stage1", "stage2")}
    for stage, (rank0, rank1) in ranks.items():
        assert rank0.keys() == rank1.keys() and rank0
        differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert not differ, f"{stage}: the ranks disagree after the last step on {differ[:5]}"
        ckpt = torch.load(run / f"{stage}.pt", map_location="cpu", weights_only=True)
        for part, weights in ckpt["modules"].items():
            for key, value in weights.items():
                (held,) = [k for k in rank0 if k == f"{part}.{key}" or k.endswith(f".{part}.{key}")]
                assert torch.equal(value, rank0[held]), (
                    f"{stage}: checkpoint {part}.{key} is not what rank 0 holds"
                )
        assert ckpt["step"] == 4
        assert all(torch.isfinite(v).all() for m in ckpt["modules"].values() for v in m.values())
        records = [json.loads(line) for line in (run / f"metrics-{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4], "only rank 0 writes the log"
