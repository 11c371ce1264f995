"""``dir-train stage2 --init-from ENTRY``: Stage II from a model_store entry, with no stage1.pt in the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.training.test_resume import image_dir, micro
from training.cli import main
from training.errors import ConfigError
from training.export import export_system
from training.export.onnx_export import export_run
from training.models import DiRSystem
from training.train.config import TrainConfig, config_to_dict
from training.train.loop import train_stage
from training.train.objectives import RestorationObjective
from training.train.stages import init_from_entry

__all__ = ["image_dir"]


@pytest.fixture(scope="module")
def entry(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DiRSystem, Path]:
    """A micro-config system with every weight distinct (as after training), exported as an entry."""
    cfg = micro(image_dir, tmp_path_factory.mktemp("unused"))
    torch.manual_seed(0)
    system = DiRSystem(cfg.model, "full").eval()
    with torch.no_grad():
        for p in system.parameters():
            p.add_(torch.randn(p.shape) * 1e-2)
    folder = tmp_path_factory.mktemp("store") / "dir-restore" / "0.0.1"
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 24, 40, generator=g)]
    export_system(system, folder, "0.0.1", images, training={"config": config_to_dict(cfg)})
    return system, folder


def _system(cfg: TrainConfig) -> DiRSystem:
    return RestorationObjective(cfg.model, cfg.loss, "full").system


def test_all_parts_come_from_the_entry(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path
) -> None:
    system, folder = entry
    target = _system(micro(image_dir, tmp_path))
    record = init_from_entry(target, folder)
    assert record["entry"] == "dir-restore/0.0.1" and len(record["model_onnx_sha256"]) == 64
    assert record["parts"] == ["dirnet", "dfrnet", "decoder", "alignment"]
    for part in record["parts"]:
        want, got = system.get_submodule(part).state_dict(), target.get_submodule(part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part


def test_a_wider_alignment_starts_fresh_and_other_encoders_are_refused(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path
) -> None:
    cfg = micro(image_dir, tmp_path)
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, align_width=12))
    assert init_from_entry(_system(wider), entry[1])["parts"] == ["dirnet", "dfrnet", "decoder"]
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, widths=(8, 8, 16)))
    with pytest.raises(ConfigError, match=r"config's dirnet does not match the entry's"):
        init_from_entry(_system(other), entry[1])


def test_stage2_trains_from_the_entry_and_the_export_records_it(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path
) -> None:
    """No stage1.pt in the run: Stage II starts from the entry, its frozen parts stay the entry's."""
    system, folder = entry
    cfg = micro(image_dir, tmp_path / "run")
    ckpt_path = train_stage(cfg, "stage2", init_from=folder, progress=False, steps=3)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["init_from"]["entry"] == "dir-restore/0.0.1" and ckpt["step"] == 3
    for part in ("dirnet", "dfrnet", "decoder"):
        want = system.get_submodule(part).state_dict()
        assert all(torch.equal(want[k], ckpt["modules"][part][k]) for k in want), part
    with pytest.raises(ConfigError, match="fresh stage2 or denoise"):
        train_stage(cfg, "stage2", init_from=folder, resume=True, progress=False)
    with pytest.raises(ConfigError, match="fresh stage2 or denoise"):
        train_stage(cfg, "stage1", init_from=folder, progress=False)
    exported = export_run(Path(cfg.run_dir), tmp_path / "out" / "0.0.2", "0.0.2")
    assert exported.manifest.training["init_from"]["entry"] == "dir-restore/0.0.1"


def test_cli_takes_init_from_for_stage2_and_denoise_only(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["stage1", "--config", "tiny", "--init-from", str(entry[1])])
    assert "unrecognized arguments: --init-from" in capsys.readouterr().err
    code = main(["stage2", "--config", "tiny", "--resume", "--init-from", str(entry[1])])
    assert code == 2 and "fresh stage2" in capsys.readouterr().err
