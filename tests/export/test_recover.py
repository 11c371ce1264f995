"""system_from_entry: the PyTorch system rebuilt from an entry's model.onnx equals the exported one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelstore.manifest import read_manifest, sha256_file
from modelstore.runner import make_session
from modelstore.store import resolve_entry
from service.settings import DEFAULT_MODEL_STORE
from tests.export.test_export import SMALL, pool_sensitive
from training.errors import CheckpointError
from training.export import export_system
from training.export.cli import main as export_main
from training.models import VARIANT_PARTS, DiRSystem
from training.models.checkpoint import system_from_entry
from training.paths import data_root
from training.train.config import config_to_dict, load_config


def _export(system: DiRSystem, entry: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 24, 40, generator=g)]
    export_system(system, entry, "0.0.1", images, training={"config": {"model": asdict(SMALL)}})
    return entry


@pytest.fixture(scope="module")
def small_entry(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiRSystem, Path]:
    """A small system whose every weight differs (as after training), exported."""
    torch.manual_seed(3)
    system = pool_sensitive(DiRSystem(SMALL, "full").eval())
    with torch.no_grad():
        for p in system.parameters():
            p.add_(torch.randn(p.shape) * 1e-3)
    return system, _export(system, tmp_path_factory.mktemp("store") / "dir-restore" / "0.0.1")


def test_rebuilt_weights_equal_the_exported_system(small_entry: tuple[DiRSystem, Path]) -> None:
    system, entry = small_entry
    rebuilt = system_from_entry(entry)
    assert rebuilt.variant == "full" and not rebuilt.training
    for part in VARIANT_PARTS["full"]:
        want = system.get_submodule(part).state_dict()
        got = rebuilt.get_submodule(part).state_dict()
        assert want.keys() == got.keys()
        for name in want:
            assert torch.equal(want[name], got[name]), f"{part}.{name}"


def test_merged_untrained_weights_are_refused_by_name(tmp_path: Path) -> None:
    """An untrained system's two guided layers share their delta-kernel FC bias: ONNX stores it once."""
    torch.manual_seed(3)
    entry = _export(DiRSystem(SMALL, "full").eval(), tmp_path / "dir-restore" / "0.0.1")
    with pytest.raises(CheckpointError, match=r"no weight named system\..*merges weights"):
        system_from_entry(entry)


def _copy_entry(entry: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in entry.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_entry_without_model_config_is_refused(small_entry: tuple[DiRSystem, Path], tmp_path: Path) -> None:
    entry = _copy_entry(small_entry[1], tmp_path / "e")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["training"] = {"run": "unit"}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"no training\.config\.model"):
        system_from_entry(entry)


def test_config_that_does_not_fit_the_weights_names_the_shapes(
    small_entry: tuple[DiRSystem, Path], tmp_path: Path
) -> None:
    entry = _copy_entry(small_entry[1], tmp_path / "e")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["training"]["config"]["model"] = asdict(replace(SMALL, widths=(8, 8, 16)))
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"has shape .* model config needs"):
        system_from_entry(entry)


def test_tampered_graph_fails_its_sha256(small_entry: tuple[DiRSystem, Path], tmp_path: Path) -> None:
    entry = _copy_entry(small_entry[1], tmp_path / "e")
    with (entry / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        system_from_entry(entry)


def test_missing_entry_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"cannot read manifest\.json"):
        system_from_entry(tmp_path / "nothing")


def test_committed_default_model_matches_its_graphs_on_a_real_image() -> None:
    """The shipped entry rebuilt in PyTorch reproduces its two-pass ONNX output on a cc15 crop."""
    path = data_root() / "cc15" / "d600_iso3200_1_real.png"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path} (set DIR_DATA_ROOT)")
    entry = resolve_entry(DEFAULT_MODEL_STORE, "dir-restore", "restore")
    guide = read_manifest(entry.path).guide
    assert guide is not None
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[:96, :128] / 255.0
    x = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    providers = ["CPUExecutionProvider"]
    (features,) = make_session(entry.path / guide.onnx_file, providers, 1).run(None, {"image": x})
    serve = make_session(entry.path / entry.manifest.onnx_file, providers, 1)
    restored = serve.run(["restored"], {"image": x, guide.mean_input: features.mean(axis=(2, 3))})[0]
    with torch.no_grad():
        ours = system_from_entry(entry.path)(torch.from_numpy(x))["restored"].numpy()
    assert float(np.abs(ours - restored).max()) < 1e-4


def test_dir_export_re_exports_an_entry_byte_for_byte(
    small_entry: tuple[DiRSystem, Path], tmp_path: Path, dataset: Callable[[str], Path]
) -> None:
    """``dir-export ENTRY --to NEW``: the same graphs again (parity images from the config's data folder),
    provenance naming the source; refuses to write into the source itself."""
    dataset("bsds500_train")
    source = _copy_entry(small_entry[1], tmp_path / "src" / "dir-restore" / "0.0.1")
    manifest = json.loads((source / "manifest.json").read_text())
    config = config_to_dict(load_config("tiny"))
    config["model"] = asdict(SMALL)
    manifest["training"] = {"config": config}
    (source / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "dst" / "dir-restore" / "0.0.2"
    assert export_main([str(source), "--to", str(target)]) == 0
    new = read_manifest(target)
    assert new.version == "0.0.2" and new.tile == read_manifest(source).tile
    assert new.training["rebuilt_from"]["entry"] == "dir-restore/0.0.1"
    for name in ("model.onnx", "guide.onnx", "denoise.onnx"):
        assert sha256_file(target / name) == sha256_file(source / name), name
    assert export_main([str(source), "--to", str(source)]) == 2
