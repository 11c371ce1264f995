"""The detect protocol: clean / degraded / restored rows, a clear error without a detector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelstore.detector import find_detector
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
