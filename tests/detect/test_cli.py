"""``dir-models`` end to end on a tiny ONNX detector (and on the real weights where the data is present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.detect.conftest import WEIGHTS, constant_detector_onnx
from training.detect.cli import main


def test_add_onnx_list_detect(tmp_path: Path, names_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    out = np.array([[[32.0, 32.0, 32.0, 16.0, 0.9, 0.1, 0.9]]], np.float32)
    onnx_path = constant_detector_onnx(tmp_path / "My Model.onnx", out, 64)
    argv = ["add-detector", "onnx", str(onnx_path), "--layout", "yolov5", "--names", str(names_file)]
    assert main([*argv, "--input-size", "64", "--store", str(store)]) == 0
    assert (store / "my-model" / "1" / "manifest.json").is_file()
    assert main(["list", "--store", str(store)]) == 0
    assert "my-model/1\tdetect\tyolov5" in capsys.readouterr().out

    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    annotated = tmp_path / "out.png"
    assert main(["detect", str(image), "--store", str(store), "--out", str(annotated)]) == 0
    (det,) = json.loads(capsys.readouterr().out)
    assert det["class_name"] == "dog" and det["box"] == pytest.approx([16, 24, 48, 40], abs=1e-4)
    assert annotated.is_file()


def test_wrong_layout_exits_2_with_message(
    tmp_path: Path, names_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = constant_detector_onnx(tmp_path / "v8.onnx", np.zeros((1, 6, 100), np.float32), 64)
    argv = ["add-detector", "onnx", str(onnx_path), "--layout", "yolov5", "--names", str(names_file)]
    assert main([*argv, "--input-size", "64", "--store", str(tmp_path / "s")]) == 2
    assert "does not match layout 'yolov5'" in capsys.readouterr().err


def test_detect_without_entry_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="dir-models add-detector yolo-fastestv2"):
        main(["detect", str(tmp_path / "x.png"), "--store", str(tmp_path)])


def test_add_yolo_fastestv2(yf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert main(["add-detector", "yolo-fastestv2", str(yf_dir / WEIGHTS), "--store", str(store)]) == 0
    assert "ONNX vs torch" in capsys.readouterr().out
    manifest = json.loads((store / "yolo-fastestv2" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "detect" and manifest["extra"]["channel_order"] == "BGR"
    assert manifest["outputs"][0]["shape"] == ["N", 1815, 85]
    assert main(["add-detector", "yolo-fastestv2", str(yf_dir / WEIGHTS), "--store", str(store)]) == 2
    assert "--force" in capsys.readouterr().err
