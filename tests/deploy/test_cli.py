"""The ``dir`` CLI end to end against the real service app served by uvicorn on loopback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client.cli import EXIT_FAILED, EXIT_UNAVAILABLE, main
from tests.deploy.conftest import app_for, free_port, serve


@pytest.fixture(scope="module")
def plain_url(fixture_store: Path) -> Iterator[str]:
    with serve(app_for(fixture_store)) as url:
        yield url


@pytest.fixture(scope="module")
def detector_url(detector_store: Path) -> Iterator[str]:
    with serve(app_for(detector_store)) as url:
        yield url


def test_restore_many_files_with_progress(
    plain_url: str, sample_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = []
    for i in range(3):
        copy = tmp_path / f"cam{i}.jpg"
        shutil.copy(sample_jpeg, copy)
        inputs.append(str(copy))
    out = tmp_path / "out"
    assert main(["--url", plain_url, "restore", *inputs, "-o", str(out), "-j", "2"]) == 0
    captured = capsys.readouterr()
    assert "3/3" in captured.err, "tqdm progress bar over the files"
    assert f"restored 3 image(s) into {out}" in captured.out
    size = Image.open(sample_jpeg).size
    for i in range(3):
        with Image.open(out / f"cam{i}.png") as restored:
            assert restored.format == "PNG"
            assert restored.size == size


def test_restore_reports_a_bad_file_and_exits_non_zero(
    plain_url: str, sample_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code = main(["--url", plain_url, "restore", str(sample_jpeg), str(bad), "-o", str(tmp_path / "o")])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{bad}: HTTP 415" in err
    assert "1 of 2 images failed" in err
    assert (tmp_path / "o" / f"{sample_jpeg.stem}.png").is_file()


def test_represent_writes_npy(
    plain_url: str, sample_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep.npy"
    assert main(["--url", plain_url, "represent", str(sample_jpeg), "-o", str(out)]) == 0
    array = np.load(out, allow_pickle=False)
    width, height = Image.open(sample_jpeg).size
    assert array.dtype == np.float32
    assert array.ndim == 3 and array.shape[1] * 4 >= height and array.shape[2] * 4 >= width
    assert f"shape {tuple(array.shape)}" in capsys.readouterr().out


def test_detect_without_detector_says_so(
    plain_url: str, sample_jpeg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", plain_url, "detect", str(sample_jpeg), "--json"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "no detector installed" in err


def test_detect_json_on_a_real_detector(
    detector_url: str, sample_jpeg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", detector_url, "detect", str(sample_jpeg), "--json", "--compare"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["detector"].startswith("yolo-fastestv2/")
    assert body["input_detections"] is not None
    assert "person" in {d["class_name"] for d in body["detections"]}
    width, height = Image.open(sample_jpeg).size
    for det in body["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert main(["--url", detector_url, "detect", str(sample_jpeg)]) == 0
    assert capsys.readouterr().out.startswith("restored: ")


def test_server_down_gives_a_clear_message(
    sample_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (
        ["restore", str(sample_jpeg), "-o", str(tmp_path)],
        ["represent", str(sample_jpeg), "-o", str(tmp_path / "r.npy")],
        ["detect", str(sample_jpeg), "--json"],
    ):
        assert main(["--url", url, *argv]) == EXIT_UNAVAILABLE
        err = capsys.readouterr().err
        assert f"cannot reach the DiR server at {url}" in err
        assert "Is the server running?" in err
