"""``dir-train denoise``: the denoise mode's encoder, trained on noise-free renderings, exported, rebuilt."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modelstore.manifest import read_manifest, sha256_file
from tests.training.test_init_from import entry
from tests.training.test_resume import MICRO_MODEL, image_dir, micro
from training.errors import CheckpointError
from training.export.cli import main as export_main
from training.export.onnx_export import export_run
from training.models import VARIANT_PARTS, DiRSystem, load_system
from training.models.checkpoint import system_from_entry
from training.train.data import StepBatches
from training.train.loop import train_stage
from training.train.objectives import DenoiseObjective
from training.train.stages import _init_denoise

__all__ = ["entry", "image_dir"]


def test_render_batches_pair_each_view_with_its_rendering() -> None:
    images = [(torch.rand(3, 40, 40) * 255).to(torch.uint8) for _ in range(3)]
    cpu = torch.device("cpu")
    render = StepBatches(images, 2, 32, "ablation", 1, base_seed=1, device=cpu, target="render")
    plain = StepBatches(images, 2, 32, "ablation", 1, base_seed=1, device=cpu)
    (target, view), (clean, same_view) = render[4], plain[4]
    assert torch.equal(view, same_view) and not torch.equal(target, clean)
    assert float((target - view).abs().mean()) < float((clean - view).abs().mean()) + 0.05
    with pytest.raises(ValueError, match="'render' with one view"):
        StepBatches(images, 2, 32, "ablation", 2, base_seed=1, device=cpu, target="render")


def test_only_the_denoiser_learns(entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path) -> None:
    system, folder = entry
    cfg = micro(image_dir, tmp_path / "run", denoise={"steps": 3, "warmup_steps": 1})
    ckpt_path = train_stage(cfg, "denoise", init_from=folder, progress=False)
    assert ckpt_path.name == "denoise.pt"
    trained = load_system(tmp_path / "run")
    assert trained.has_denoiser and trained.parts == (*VARIANT_PARTS["full"], "denoiser")
    for part in VARIANT_PARTS["full"]:
        want, got = system.get_submodule(part).state_dict(), trained.get_submodule(part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part
    start, now = system.get_submodule("dfrnet").state_dict(), trained.get_submodule("denoiser").state_dict()
    assert any(not torch.equal(start[k], now[k]) for k in start)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained(x)["restored"], system(x)["restored"])
        assert not torch.equal(trained.denoise(x), system.denoise(x))
    log = (tmp_path / "run" / "metrics-denoise.jsonl").read_text()
    assert '"val_psnr"' in log and '"image_l1"' in log


def test_export_with_the_denoiser_changes_only_the_denoise_graph(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dir-export ENTRY --denoiser denoise.pt``: the serving graphs stay byte for byte, denoise.onnx runs
    the denoiser, the entry rebuilds with it, and a denoise.pt of another entry is refused."""
    _, folder = entry
    cfg = micro(image_dir, tmp_path / "run", denoise={"steps": 2, "warmup_steps": 1})
    ckpt = train_stage(cfg, "denoise", init_from=folder, progress=False)
    target = tmp_path / "store" / "dir-restore" / "0.0.2"
    assert export_main([str(folder), "--to", str(target), "--denoiser", str(ckpt)]) == 0
    new, old = read_manifest(target), read_manifest(folder)
    assert new.extra["denoise"]["encoder"] == "denoiser" and old.extra["denoise"]["encoder"] == "dfrnet"
    assert new.training["denoise"]["steps"] == 2 and new.training["denoise"]["run"] == "run"
    for name in ("model.onnx", "guide.onnx", "dfrnet.onnx", "decoder.onnx"):
        assert sha256_file(target / name) == sha256_file(folder / name), name
    assert sha256_file(target / "denoise.onnx") != sha256_file(folder / "denoise.onnx")
    rebuilt, trained = system_from_entry(target), load_system(ckpt)
    want, got = trained.get_submodule("denoiser").state_dict(), rebuilt.get_submodule("denoiser").state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # Another entry whose Stage II moved A but shares DfRNet and D*: the denoise graph fits it.
    other_cfg = micro(image_dir, tmp_path / "other-run")
    train_stage(other_cfg, "stage2", init_from=folder, progress=False, steps=1)
    other = export_run(tmp_path / "other-run", tmp_path / "other" / "0.0.3", "0.0.3").entry_dir
    assert export_main([str(other), "--to", str(tmp_path / "moved-a"), "--denoiser", str(ckpt)]) == 0
    moved = read_manifest(tmp_path / "moved-a")
    assert moved.training["denoise"]["same_entry"] is False
    assert sha256_file(tmp_path / "moved-a" / "model.onnx") == sha256_file(other / "model.onnx")
    # An entry with another DfRNet: the denoise.pt did not start from it.
    shutil.copytree(tmp_path / "other-run", tmp_path / "fresh-run")
    stage2 = torch.load(tmp_path / "fresh-run" / "stage2.pt", weights_only=True)
    for value in stage2["modules"]["dfrnet"].values():
        value.add_(0.01)
    torch.save(stage2, tmp_path / "fresh-run" / "stage2.pt")
    unrelated = export_run(tmp_path / "fresh-run", tmp_path / "fresh" / "0.0.4", "0.0.4").entry_dir
    capsys.readouterr()
    assert export_main([str(unrelated), "--to", str(tmp_path / "again"), "--denoiser", str(ckpt)]) == 2
    assert "was not trained from this entry's dfrnet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "run"), "--to", str(tmp_path / "x"), "--denoiser", str(ckpt)])
    assert "--denoiser goes with an entry SOURCE" in capsys.readouterr().err


def test_denoise_after_stage2_in_the_same_run(image_dir: Path, tmp_path: Path) -> None:
    cfg = micro(image_dir, tmp_path / "run", denoise={"steps": 2, "warmup_steps": 1})
    with pytest.raises(CheckpointError, match="train stage2 first"):
        train_stage(cfg, "denoise", progress=False)
    train_stage(replace(cfg, stage1=replace(cfg.stage1, steps=2)), "stage1", progress=False)
    train_stage(replace(cfg, stage2=replace(cfg.stage2, steps=2)), "stage2", progress=False)
    train_stage(cfg, "denoise", progress=False)
    run = Path(cfg.run_dir)
    assert load_system(run).has_denoiser
    exported = export_run(run, tmp_path / "out" / "0.0.1", "0.0.1")
    assert exported.manifest.extra["denoise"]["encoder"] == "denoiser"
    assert exported.manifest.training["denoise_steps"] == 2
    # A newer stage2.pt makes the denoise.pt stale.
    train_stage(replace(cfg, stage2=replace(cfg.stage2, steps=3)), "stage2", progress=False)
    with pytest.raises(CheckpointError, match="rerun dir-train denoise"):
        load_system(run)


def test_the_objective_needs_a_denoiser(image_dir: Path, tmp_path: Path) -> None:
    cfg = micro(image_dir, tmp_path)
    with pytest.raises(ValueError, match="denoiser=True"):
        DenoiseObjective(DiRSystem(cfg.model, "full"))
    with pytest.raises(CheckpointError, match="only the full variant"):
        DiRSystem(cfg.model, "r0_only", denoiser=True)


def test_an_entry_with_a_trained_denoiser_is_continued(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path
) -> None:
    """``--init-from`` an entry exported with ``--denoiser`` starts from that denoiser, not from DfRNet; the
    next export records the start and keeps the earlier denoise record under ``continued``."""
    _, folder = entry
    cfg = micro(image_dir, tmp_path / "run", denoise={"steps": 2, "warmup_steps": 1})
    first = train_stage(cfg, "denoise", init_from=folder, progress=False)
    assert torch.load(first, weights_only=True)["init_from"]["denoiser_from"] == "dfrnet"
    trained_entry = tmp_path / "store" / "dir-restore" / "0.0.2"
    assert export_main([str(folder), "--to", str(trained_entry), "--denoiser", str(first)]) == 0
    shipped = system_from_entry(trained_entry)

    again = micro(image_dir, tmp_path / "again", denoise={"steps": 2, "warmup_steps": 1})
    start = DiRSystem(again.model, "full", denoiser=True)
    assert _init_denoise(start, tmp_path / "again", trained_entry)["denoiser_from"] == "entry"
    want, got = shipped.get_submodule("denoiser").state_dict(), start.get_submodule("denoiser").state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)

    second = train_stage(again, "denoise", init_from=trained_entry, progress=False)
    assert torch.load(second, weights_only=True)["init_from"]["denoiser_from"] == "entry"
    continued = tmp_path / "store" / "dir-restore" / "0.0.3"
    assert export_main([str(trained_entry), "--to", str(continued), "--denoiser", str(second)]) == 0
    record = read_manifest(continued).training["denoise"]
    assert record["denoiser_from"] == "entry" and record["continued"]["run"] == "run"


def test_the_gated_decode_trains_exports_and_rebuilds(
    entry: tuple[DiRSystem, Path], image_dir: Path, tmp_path: Path
) -> None:
    """``model.denoise_decode: gated``: the denoiser and the detail gate learn (the rest stays frozen), the
    entry's denoise graph runs the gated decode (parity-checked by the export), the manifest says so, and
    the rebuilt system holds the gate's weights."""
    _, folder = entry
    model = {**MICRO_MODEL, "denoise_decode": "gated", "gate_width": 4}
    cfg = micro(image_dir, tmp_path / "run", model=model, denoise={"steps": 2, "warmup_steps": 1})
    ckpt = train_stage(cfg, "denoise", init_from=folder, progress=False)
    trained = load_system(ckpt)
    assert trained.parts == (*VARIANT_PARTS["full"], "denoiser", "detail_gate")
    gate = trained.get_submodule("detail_gate").state_dict()
    assert any(bool(v.abs().sum() > 0) for k, v in gate.items() if k.startswith("body.4"))
    target = tmp_path / "store" / "dir-restore" / "0.0.2"
    assert export_main([str(folder), "--to", str(target), "--denoiser", str(ckpt)]) == 0
    manifest = read_manifest(target)
    assert manifest.extra["denoise"]["decode"] == "gated"
    assert manifest.training["config"]["model"]["denoise_decode"] == "gated"
    rebuilt = system_from_entry(target)
    got = rebuilt.get_submodule("detail_gate").state_dict()
    assert all(torch.equal(gate[k], got[k]) for k in gate)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.denoise(x), trained.denoise(x), atol=1e-6)
    # The next denoise stage from this entry continues its gate as well as its denoiser.
    again = DiRSystem(cfg.model, "full", denoiser=True)
    assert _init_denoise(again, tmp_path / "again", target)["denoiser_from"] == "entry"
    started = again.get_submodule("detail_gate").state_dict()
    assert all(torch.equal(gate[k], started[k]) for k in gate)


def test_an_open_gate_returns_the_input(image_dir: Path, tmp_path: Path) -> None:
    """D*(den(x)) + m (x - D*(den(x))) with m = 1 is x itself, whatever the denoiser and D*'s own error."""
    cfg = micro(image_dir, tmp_path, model={**MICRO_MODEL, "denoise_decode": "gated"})
    system = DiRSystem(cfg.model, "full", denoiser=True).eval()
    with torch.no_grad():
        system.get_submodule("detail_gate").body[-1].bias.fill_(30.0)
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(system.denoise_unclamped(x), x, atol=1e-5)
        with pytest.raises(CheckpointError, match="unknown denoise_decode"):
            DiRSystem(replace(cfg.model, denoise_decode="other"), "full", denoiser=True)
