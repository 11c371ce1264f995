"""``dir-eval`` end to end on small real-noise runs: JSON, Markdown table, figure, diagnostic labels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from training.evaluate.cli import main


def test_cli_writes_json_report_and_figure(tmp_path: Path, dataset: Callable[[str], Path]) -> None:
    dataset("cc15")
    out_json, report = tmp_path / "out.json", tmp_path / "OUT.md"
    argv = ["--protocol", "real", "--datasets", "cc15", "--limit", "1", "--methods", "identity,nlm,dir-full"]
    assert main([*argv, "--json", str(out_json), "--report", str(report), "--no-progress"]) == 0
    data = json.loads(out_json.read_text())
    run = data["runs"][0]
    assert run["protocol"] == "real"
    by_name = {m["method"]: m for m in run["methods"]}
    assert by_name["nlm"]["scores"][0]["psnr"] > 20.0
    assert by_name["identity"]["scores"][0]["seconds"] >= 0.0
    assert "--run" in by_name["dir-full"]["reason"]
    text = report.read_text()
    assert "| OpenCV NLM |" in text and "CC15 (Nam) ΔPSNR vs input" in text and "CC15 (Nam) NIQE" in text
    assert by_name["nlm"]["scores"][0]["nr"] > 0.0
    assert (tmp_path / "img" / "results_real.png").stat().st_size > 0
    assert (tmp_path / "img" / "results_real_psnr.png").stat().st_size > 0
    assert "![PSNR per method, protocol real](img/results_real_psnr.png)" in text


def test_cli_unknown_method_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--protocol", "real", "--methods", "bogus", "--no-progress"]) == 2
    assert "valid methods" in capsys.readouterr().err


def test_cli_labels_the_pilot_decode_as_a_diagnostic(tmp_path: Path, dataset: Callable[[str], Path]) -> None:
    """The pilot decode is a diagnostic; the shipped denoise mode is one of our models, checked against the
    targets (no paper value: it is not the paper's restoration)."""
    dataset("cc15")
    out_json, report = tmp_path / "out.json", tmp_path / "OUT.md"
    methods = "identity,onnx-pilot,onnx-denoise,dncnn"
    argv = ["--protocol", "real", "--datasets", "cc15", "--limit", "1", "--methods", methods]
    assert main([*argv, "--json", str(out_json), "--report", str(report), "--no-progress"]) == 0
    pilot = next(
        m for m in json.loads(out_json.read_text())["runs"][0]["methods"] if m["method"] == "onnx-pilot"
    )
    if pilot["reason"] is not None:
        pytest.skip(f"onnx-pilot has no model here: {pilot['reason']}")
    assert pilot["family"] == "diagnostic" and pilot["version"].startswith("dir-restore/")
    assert pilot["scores"][0]["psnr"] > 20.0
    text = report.read_text()
    assert "| Diagnostic: D*(DfR(x)), pilot decoded `dir-restore/" in text
    assert "A diagnostic (`onnx-pilot`): neither the paper's method nor a served output" in text
    denoise = next(
        m for m in json.loads(out_json.read_text())["runs"][0]["methods"] if m["method"] == "onnx-denoise"
    )
    assert denoise["family"] == "shipped" and denoise["scores"][0]["psnr"] > 20.0
    assert "(DiR shipped, denoise mode (ONNX)) vs" in text and "paper's full DiR" not in text
