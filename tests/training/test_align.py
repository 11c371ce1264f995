"""``dir-train align`` end to end on CPU with a tiny restore entry and a tiny Yolo-FastestV2 entry that the
test builds itself (random weights, 3 classes): no shared data, no GPU.

The task loss is a tiny distillation term defined here (the project's losses live in
``training.detect.loss``), so these tests check the loop, not the loss.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor

from modelstore.manifest import read_manifest
from tests.training.test_resume import micro
from training.cli import main
from training.detect.install import install_yolo_fastestv2
from training.detect.model import YoloFastestV2
from training.errors import ConfigError, DataError
from training.export import export_system
from training.models import DiRSystem
from training.models.checkpoint import system_from_entry
from training.train.align import run as align_run
from training.train.align.config import AlignConfig, align_config_from_dict
from training.train.align.detector import load_torch_detector
from training.train.align.entry import check_uncommittable
from training.train.align.objective import AlignObjective, task_loss
from training.train.align.run import AlignRequest, train_align
from training.train.config import config_to_dict

CLASSES = ["a", "b", "c"]


def tiny_distill(outputs: Any, teacher: Any, targets: Tensor) -> dict[str, Tensor]:
    """Mean squared difference of every raw output on D*(r+) and on y*."""
    terms = [
        (s - t).pow(2).mean()
        for so, to in zip(outputs, teacher, strict=True)
        for s, t in zip(so, to, strict=True)
    ]
    loss = torch.stack(terms).sum()
    return {"loss": loss, "mse": loss.detach()}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five random 48x64 PNGs in the YOLO layout (``images/train``, ``labels/train``), one box each."""
    root = tmp_path_factory.mktemp("align-data")
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            root / "images" / "train" / f"{i}.png"
        )
        (root / "labels" / "train" / f"{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.4 0.5\n")
    return root


@pytest.fixture(scope="module")
def store(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a micro dir-restore entry (distinct weights) and a 3-class Yolo-FastestV2 entry."""
    root = tmp_path_factory.mktemp("align-store")
    cfg = micro(images / "images" / "train", root / "unused")
    torch.manual_seed(0)
    system = DiRSystem(cfg.model, "full").eval()
    with torch.no_grad():
        for p in system.parameters():
            p.add_(torch.randn(p.shape) * 1e-2)
    g = torch.Generator().manual_seed(0)
    parity = [torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 24, 40, generator=g)]
    export_system(
        system, root / "dir-restore" / "0.0.1", "0.0.1", parity, training={"config": config_to_dict(cfg)}
    )
    torch.save(YoloFastestV2(len(CLASSES)).state_dict(), root / "tiny-yolo.pt")
    install_yolo_fastestv2(root / "tiny-yolo.pt", root, name="tiny-yolo", class_names=CLASSES)
    return root


def _config(tmp: Path, images: Path, **extra: Any) -> Path:
    raw = {
        "run_dir": str(tmp / "run"),
        "device": "cpu",
        "num_threads": 1,
        "log_every": 1,
        "ckpt_every": 100,
        "data": {"images": str(images), "crop": 32, "batch_size": 2},
        "optim": {"steps": 3, "lr": 1e-3, "warmup_steps": 1},
        **extra,
    }
    path = tmp / "align.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _request(store: Path, to: Path, **extra: Any) -> AlignRequest:
    return AlignRequest(
        detector="tiny-yolo",
        init_from=str(store / "dir-restore" / "0.0.1"),
        to=str(to),
        store=str(store),
        detector_weights=str(store / "tiny-yolo.pt"),
        **extra,
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_cli_writes_an_aligned_entry_that_loads_and_says_what_it_is_aligned_for(
    store: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(align_run, "task_loss", lambda *args: tiny_distill)
    to = tmp_path / "dir-align-tiny-yolo" / "1"
    argv = ["align", "--task", "detect", "--detector", "tiny-yolo", "--store", str(store)]
    argv += ["--init-from", str(store / "dir-restore" / "0.0.1"), "--to", str(to), "--loss", "distill"]
    argv += ["--config", str(_config(tmp_path, images)), "--detector-weights", str(store / "tiny-yolo.pt")]
    assert main([*argv, "--no-progress"]) == 0
    manifest = read_manifest(to)
    assert manifest.name == "dir-align-tiny-yolo" and manifest.version == "1" and manifest.task == "restore"
    aligned = manifest.extra["aligned_for"]
    assert aligned["task"] == "detect" and aligned["detector"] == "tiny-yolo@1"
    assert aligned["detector_mode"] == "frozen" and aligned["loss"] == "distill"
    assert aligned["detector_entry"] == "tiny-yolo@1" and aligned["local_only"] and not aligned["commit"]
    assert manifest.training["align"]["step"] == 3
    source, trained = system_from_entry(store / "dir-restore" / "0.0.1"), system_from_entry(to)
    for part in ("dirnet", "dfrnet", "decoder"):
        assert _same(source.get_submodule(part), trained.get_submodule(part)), part
    assert not _same(source.get_submodule("alignment"), trained.get_submodule("alignment"))
    assert (tmp_path / "run" / "loss_curves.png").is_file()
    assert len((tmp_path / "run" / "metrics-align.jsonl").read_text().splitlines()) == 3


def _objective(store: Path, joint: bool) -> AlignObjective:
    det = load_torch_detector(store / "tiny-yolo" / "1", store / "tiny-yolo.pt")
    system = system_from_entry(store / "dir-restore" / "0.0.1")
    loss = align_config_from_dict({}).loss
    return AlignObjective(system, det.module, det.manifest, tiny_distill, loss, joint).train()


@pytest.mark.parametrize("joint", [False, True])
def test_gradients_reach_a_and_in_joint_mode_the_detector_only(store: Path, joint: bool) -> None:
    objective = _objective(store, joint)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]])
    objective(clean * 0.8 + 0.05, clean, targets)["loss"].backward()
    system = objective.system
    assert all(p.grad is not None for p in system.get_submodule("alignment").parameters())
    for part in ("dirnet", "dfrnet", "decoder"):
        assert all(p.grad is None for p in system.get_submodule(part).parameters()), part
    assert all(p.grad is None for p in objective.teacher.parameters())
    grads = [p.grad for p in objective.detector.parameters()]
    assert all(gr is not None for gr in grads) if joint else all(gr is None for gr in grads)
    assert not objective.detector.training and not system.get_submodule("dirnet").training


def test_resume_continues_from_the_step_it_stopped_at_bit_for_bit(
    store: Path, images: Path, tmp_path: Path
) -> None:
    cfg = align_config_from_dict(
        yaml.safe_load(_config(tmp_path, images, optim={"steps": 4, "warmup_steps": 1}).read_text())
    )
    stopped = train_align(
        cfg, _request(store, tmp_path / "a" / "1"), stop_at=2, progress=False, task=tiny_distill
    )
    assert stopped.entry is None and stopped.step == 2
    resumed = train_align(
        cfg, _request(store, tmp_path / "a" / "1"), resume=True, progress=False, task=tiny_distill
    )
    assert resumed.step == 4 and resumed.entry is not None
    whole_cfg = align_config_from_dict(
        {
            **yaml.safe_load(_config(tmp_path, images).read_text()),
            "run_dir": str(tmp_path / "whole"),
            "optim": {"steps": 4, "warmup_steps": 1},
        }
    )
    whole = train_align(whole_cfg, _request(store, tmp_path / "b" / "1"), progress=False, task=tiny_distill)
    a = torch.load(resumed.checkpoint, weights_only=True)["modules"]["alignment"]
    b = torch.load(whole.checkpoint, weights_only=True)["modules"]["alignment"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_joint_mode_writes_the_fine_tuned_detector_as_a_new_entry(
    store: Path, images: Path, tmp_path: Path
) -> None:
    cfg = align_config_from_dict(
        yaml.safe_load(_config(tmp_path, images, optim={"steps": 2, "warmup_steps": 1}).read_text())
    )
    to = tmp_path / "dir-align-tiny-yolo" / "1"
    result = train_align(cfg, _request(store, to, mode="joint"), progress=False, task=tiny_distill)
    assert result.detector_entry == tmp_path / "dir-align-tiny-yolo-detector" / "1"
    detector = read_manifest(result.detector_entry)
    assert detector.task == "detect" and detector.extra["class_names"] == CLASSES
    assert read_manifest(to).extra["aligned_for"]["detector_entry"] == "dir-align-tiny-yolo-detector@1"
    tuned = load_torch_detector(result.detector_entry, tmp_path / "run" / "detector.pt").module
    original = load_torch_detector(store / "tiny-yolo" / "1", store / "tiny-yolo.pt").module
    assert not _same(tuned, original)


def test_bad_requests_fail_with_a_message(
    store: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = align_config_from_dict(yaml.safe_load(_config(tmp_path, images).read_text()))
    unlabelled = tmp_path / "plain"
    unlabelled.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(unlabelled / "x.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(unlabelled / "y.png")
    with pytest.raises(DataError, match="--loss detect needs YOLO labels"):
        train_align(
            cfg,
            _request(store, tmp_path / "e" / "1", loss="detect", images=(str(unlabelled),)),
            progress=False,
            task=tiny_distill,
        )
    with pytest.raises(ConfigError, match="evaluation set"):
        align_config_from_dict({"data": {"images": "coco128_val"}})
    with pytest.raises(ConfigError, match="needs a Yolo-FastestV2 detector"):
        task_loss("detect", layout="yolov8")
    assert main(["align", "--detector", "tiny-yolo", "--store", str(store)]) == 2
    assert "needs --init-from" in capsys.readouterr().err


def test_an_entry_trained_through_unlicensed_weights_must_be_git_ignored(store: Path, tmp_path: Path) -> None:
    detector = load_torch_detector(store / "tiny-yolo" / "1", store / "tiny-yolo.pt")
    assert detector.local_only
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    target = tmp_path / "model_store" / "dir-align-tiny-yolo" / "1"
    with pytest.raises(ConfigError, match="git does not ignore this path"):
        check_uncommittable(target, detector)
    (tmp_path / ".gitignore").write_text("model_store/dir-align-*/\n")
    check_uncommittable(target, detector)


def _stage_config(tmp: Path, images: Path, run: str, joint_steps: int = 0) -> AlignConfig:
    raw = yaml.safe_load(_config(tmp, images, optim={"steps": joint_steps, "warmup_steps": 1}).read_text())
    stage = {"optim": {"steps": 4, "lr": 1e-3, "warmup_steps": 1}, "batch_size": 3, "labelled_weight": 0.5}
    return align_config_from_dict({**raw, "run_dir": str(tmp / run), "detector_stage": stage})


def test_joint_mode_detector_stage_trains_t_alone_on_renderings_then_writes_both_entries(
    store: Path, images: Path, tmp_path: Path
) -> None:
    cfg = _stage_config(tmp_path, images, "run")
    to = tmp_path / "dir-align-tiny-yolo" / "1"
    result = train_align(cfg, _request(store, to, mode="joint"), progress=False, task=tiny_distill)
    assert result.entry == to and result.detector_entry is not None
    log = (tmp_path / "run" / "metrics-detector.jsonl").read_text().splitlines()
    assert len(log) == 4 and all("distill_loss" in line and "detect_loss" in line for line in log)
    source, trained = system_from_entry(store / "dir-restore" / "0.0.1"), system_from_entry(to)
    for part in ("dirnet", "dfrnet", "decoder", "alignment"):
        assert _same(source.get_submodule(part), trained.get_submodule(part)), part
    tuned = load_torch_detector(result.detector_entry, tmp_path / "run" / "detector.pt").module
    assert not _same(tuned, load_torch_detector(store / "tiny-yolo" / "1", store / "tiny-yolo.pt").module)
    assert read_manifest(to).extra["aligned_for"]["detector_mode"] == "joint"


def test_a_run_stopped_inside_the_detector_stage_resumes_bit_for_bit(
    store: Path, images: Path, tmp_path: Path
) -> None:
    cfg = _stage_config(tmp_path, images, "stopped", joint_steps=2)
    request = _request(store, tmp_path / "a" / "1", mode="joint")
    stopped = train_align(cfg, request, stop_at=2, progress=False, task=tiny_distill)
    assert stopped.entry is None and stopped.step == 0
    assert len((tmp_path / "stopped" / "metrics-detector.jsonl").read_text().splitlines()) == 2
    resumed = train_align(cfg, request, resume=True, progress=False, task=tiny_distill)
    assert resumed.entry is not None and resumed.step == 2
    assert len((tmp_path / "stopped" / "metrics-detector.jsonl").read_text().splitlines()) == 4
    whole_cfg = _stage_config(tmp_path, images, "whole", joint_steps=2)
    whole = train_align(
        whole_cfg, _request(store, tmp_path / "b" / "1", mode="joint"), progress=False, task=tiny_distill
    )
    a = torch.load(resumed.checkpoint, weights_only=True)["modules"]
    b = torch.load(whole.checkpoint, weights_only=True)["modules"]
    for part in ("alignment", "detector"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_detector_stage_settings_that_cannot_run_are_refused(
    store: Path, images: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load(_config(tmp_path, images, optim={"steps": 0}).read_text())
    with pytest.raises(ConfigError, match="not both 0"):
        align_config_from_dict(raw)
    with pytest.raises(ConfigError, match="min_scale"):
        align_config_from_dict({**raw, "detector_stage": {"optim": {"steps": 2}, "min_scale": 0.0}})
    cfg = _stage_config(tmp_path, images, "frozen", joint_steps=2)
    with pytest.raises(ConfigError, match="--detector-mode joint"):
        train_align(cfg, _request(store, tmp_path / "f" / "1"), progress=False, task=tiny_distill)
