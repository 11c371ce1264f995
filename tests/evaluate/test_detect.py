"""The detect protocol: clean / degraded / restored rows, a clear error without a detector."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modelstore.detector import Detector, find_detector
from modelstore.manifest import read_manifest, write_manifest
from training.detect.coco_map import evaluate_detector
from training.detect.install import COCO_NAMES, install_yolo_fastestv2
from training.detect.model import YoloFastestV2
from training.evaluate import detect as detect_module
from training.evaluate.detect import DegradedCache, run_detect
from training.evaluate.errors import ProtocolError
from training.evaluate.methods import MethodContext, resolve_methods
from training.paths import REPO_ROOT


def test_detect_without_detector_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="dir-models add-detector"):
        run_detect(resolve_methods("identity"), MethodContext(model_store=tmp_path), limit=1, progress=False)


def test_degraded_cache_is_deterministic(dataset: Callable[[str], Path]) -> None:
    path = sorted((dataset("coco128_val") / "images" / "val2017").glob("*.jpg"))[0]
    with Image.open(path) as im:
        image = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:160, :200])
    first = DegradedCache().get(image)
    second = DegradedCache().get(image)
    assert torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])


def test_detect_rows_on_two_images(dataset: Callable[[str], Path], tmp_path: Path) -> None:
    dataset("coco128_val")
    store = REPO_ROOT / "model_store"
    if find_detector(store) is None:
        pytest.skip("no detector installed (dir-models add-detector yolo-fastestv2 <weights>)")
    methods, ctx = resolve_methods("identity,dir-full"), MethodContext(model_store=store)
    run = run_detect(methods, ctx, limit=2, progress=False, cache_dir=tmp_path)
    assert run.n_images == 2
    assert [r.method for r in run.rows] == [None, "identity", "dir-full"]
    clean, degraded = run.rows[0], run.rows[1]
    assert clean.map50 is not None and 0.0 <= clean.map50 <= 1.0
    assert degraded.map50 is not None and degraded.s_per_mp is not None
    again = run_detect(methods, ctx, limit=2, progress=False, cache_dir=tmp_path)
    assert again.rows[1] == degraded  # the identity row comes from the cache
    assert (tmp_path / "detect.jsonl").read_text().count("\n") == 1


def test_an_aligned_entry_is_scored_with_the_detector_it_was_aligned_with(
    dataset: Callable[[str], Path],
    fixture_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset("coco128_val")
    store = tmp_path / "store"
    for name, seed in (("yolo-fastestv2", 0), ("dir-align-x-detector", 1)):
        torch.manual_seed(seed)
        torch.save(YoloFastestV2(len(COCO_NAMES)).state_dict(), tmp_path / f"{name}.pt")
        install_yolo_fastestv2(tmp_path / f"{name}.pt", store, name=name)
    aligned = store / "dir-align-x" / "1"
    shutil.copytree(fixture_store / "dir-restore" / "0.0.1", aligned)
    manifest = read_manifest(aligned)
    record = {"task": "detect", "detector_mode": "joint", "detector_entry": "dir-align-x-detector@1"}
    write_manifest(aligned, manifest.model_copy(update={"extra": {**manifest.extra, "aligned_for": record}}))
    used: list[str] = []

    def spy(detector: Detector, *args: Any, **kwargs: Any) -> dict[str, float]:
        used.append(detector.name)
        return evaluate_detector(detector, *args, **kwargs)

    monkeypatch.setattr(detect_module, "evaluate_detector", spy)
    ctx = MethodContext(model_store=store)
    run = run_detect(resolve_methods(f"identity,onnx:{aligned}"), ctx, limit=2, progress=False)
    assert used == ["yolo-fastestv2", "yolo-fastestv2", "dir-align-x-detector"]
    assert run.rows[2].condition.endswith("+ dir-align-x-detector/1") and run.rows[2].map50 is not None
    shutil.rmtree(store / "dir-align-x-detector")
    missing = run_detect(resolve_methods(f"onnx:{aligned}"), ctx, limit=2, progress=False)
    assert missing.rows[1].map50 is None and "not installed" in str(missing.rows[1].reason)
