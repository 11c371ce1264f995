"""dir-export quantize: int8 graphs calibrated on degraded training tiles, written into a new entry version
that verifies, serves them, and stays close to the fp32 graphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelstore.manifest import read_manifest
from modelstore.store import ModelEntry, verify_entry
from training.errors import ExportError
from training.export.cli import main as export_main
from training.export.quantize import quantize_entry, quantize_graph, restored_psnr


@pytest.fixture
def entry(fixture_store: Path, dataset: Callable[[str], Path]) -> Path:
    """The fixture entry (tiles 64); skips where bsds500_train (the calibration images) is absent."""
    dataset("bsds500_train")
    return fixture_store / "dir-restore" / "0.0.1"


def test_quantize_graph_writes_a_qdq_graph_that_runs(fixture_store: Path, tmp_path: Path) -> None:
    source = fixture_store / "dir-restore" / "0.0.1" / "denoise.onnx"
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.random((1, 3, 64, 64), dtype=np.float32)} for _ in range(4)]
    target = quantize_graph(source, tmp_path / "denoise.int8.onnx", feeds)
    ops = {n.op_type for n in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert out.shape == (1, 3, 64, 64)
    assert restored_psnr(source, target, feeds)[0] > 30.0
    assert not (tmp_path / "denoise.int8.pre.onnx").exists()


def test_quantize_entry_serves_int8_and_verifies(entry: Path, tmp_path: Path) -> None:
    to = tmp_path / "dir-restore" / "0.0.2"
    report = quantize_entry(entry, to, ("denoise.onnx", "model.onnx"), calibration=4, min_psnr_db=25.0)
    manifest = read_manifest(to)
    assert manifest.version == "0.0.2"
    assert manifest.onnx_file == "model.int8.onnx"
    assert manifest.extra["denoise"]["onnx_file"] == "denoise.int8.onnx"
    roles = {f.path: f.role for f in manifest.files}
    assert roles["model.onnx"] == roles["denoise.onnx"] == "component"
    assert roles["model.int8.onnx"] == "serve" and roles["denoise.int8.onnx"] == "serve-denoise"
    verify_entry(ModelEntry(to, manifest))
    assert set(report.psnr_vs_fp32) == {"denoise.onnx", "model.onnx"}
    assert all(mean >= worst > 25.0 for mean, worst in report.psnr_vs_fp32.values())
    recorded = manifest.extra["int8"]["psnr_vs_fp32_db"]["denoise.onnx"]["mean"]
    assert recorded == pytest.approx(report.psnr_vs_fp32["denoise.onnx"][0], abs=1e-3)
    assert read_manifest(entry).onnx_file == "model.onnx"


def test_quantize_entry_refuses_low_psnr_and_leaves_nothing(entry: Path, tmp_path: Path) -> None:
    to = tmp_path / "dir-restore" / "0.0.2"
    with pytest.raises(ExportError, match="dB from fp32"):
        quantize_entry(entry, to, ("denoise.onnx",), calibration=2, min_psnr_db=500.0)
    assert not to.exists()
    assert list((tmp_path / "dir-restore").iterdir()) == []


def test_quantize_entry_refuses_unknown_graph_and_existing_target(entry: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not served graphs"):
        quantize_entry(entry, tmp_path / "x", ("dirnet.onnx",))
    (tmp_path / "y").mkdir()
    with pytest.raises(ExportError, match="exists"):
        quantize_entry(entry, tmp_path / "y", ("denoise.onnx",))


def test_cli_quantize_subcommand(entry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    to = tmp_path / "dir-restore" / "0.0.3"
    argv = ["quantize", str(entry), "--to", str(to), "--calibration", "2", "--min-psnr", "25"]
    assert export_main(argv) == 0
    out = capsys.readouterr().out
    assert "denoise.onnx: int8 vs fp32 restored PSNR" in out
    assert json.loads((to / "manifest.json").read_text())["extra"]["int8"]["graphs"] == {
        "denoise.onnx": "denoise.int8.onnx"
    }
    assert export_main(argv) == 2
