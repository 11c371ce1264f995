"""dir-isp: simulate a file or a folder, write params, draw a contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.isp import ISPParams, simulate, stable_seed
from training.isp.cli import load_srgb, main


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 30)), ("b.png", (33, 21))):
        small = rng.integers(0, 256, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_simulate_one_file_png_matches_the_api(images: Path, tmp_path: Path) -> None:
    out, params = tmp_path / "out.png", tmp_path / "p.json"
    assert (
        main(
            [
                "simulate",
                "--preset",
                "ablation",
                "--seed",
                "7",
                str(images / "a.png"),
                str(out),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    record = ISPParams.from_dict(json.loads(params.read_text())["a.png"])
    clean = load_srgb(images / "a.png")
    expected = simulate(clean, "ablation", seed=[stable_seed(7, "a.png")])
    assert record == expected.params[0]
    written = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(written, expected.degraded[0])


def test_simulate_jpeg_output_decodes_to_the_degraded_image(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    assert main(["simulate", "--seed", "7", str(images / "a.png"), str(out)]) == 0
    expected = simulate(load_srgb(images / "a.png"), "ablation", seed=[stable_seed(7, "a.png")])
    assert torch.equal(load_srgb(out)[0], expected.degraded[0])


def test_simulate_folder(images: Path, tmp_path: Path) -> None:
    out, params = tmp_path / "out", tmp_path / "params.json"
    assert main(["simulate", "--preset", "lowlight", str(images), str(out), "--params", str(params)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "b.png").size == (33, 21)
    assert sorted(json.loads(params.read_text())) == ["a.png", "b.png"]


def test_show_writes_a_labelled_sheet(images: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(images / "a.png"), "--preset", "train", "--seed", "1", "-o", str(sheet)]) == 0
    with Image.open(sheet) as im:
        assert im.mode == "RGB" and im.width >= 3 * 40 and im.height > 2 * 30


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(tmp_path / "missing.png"), str(tmp_path / "o.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["show", str(tmp_path / "broken.png"), "-o", str(tmp_path / "s.png")]) == 2
    with pytest.raises(SystemExit):
        main(["simulate", "--preset", "nope", "a", "b"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["show", "a.png", "-o", "s.png", "--device", "cuda"])
