"""Parity of the project's own mAP (training.detect.coco_map) and pycocotools' COCOeval on the same
detections: a synthetic set (always runs) and the Yolo-FastestV2 detections on coco128_val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelstore.detector import load_detector
from training.detect.coco_map import (
    Boxes,
    coco_evaluate,
    load_coco128,
    map_at,
    map_range,
    predictions_to_boxes,
)


def library_maps(preds: list[Boxes], gts: list[Boxes]) -> tuple[float, float]:
    p = coco_evaluate(preds, gts).eval["precision"][:, :, :, 0, 0]
    present = (p > -1).all(axis=(0, 1))
    return float(p[0][:, present].mean()), float(p[:, :, present].mean())


def synthetic_set(seed: int = 0, n_images: int = 40) -> tuple[list[Boxes], list[Boxes]]:
    """Random ground truth (0-5 boxes, 5 classes) and jittered predictions, 20% with a wrong class."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 6))
        xy, wh = rng.uniform(0, 200, (m, 2)), rng.uniform(5, 80, (m, 2))
        gt = Boxes(np.concatenate([xy, xy + wh], 1), rng.integers(0, 5, m))
        k = int(rng.integers(0, 15))
        j = rng.integers(0, max(m, 1), k)
        base = gt.xyxy[j] if m else rng.uniform(0, 200, (k, 4))
        box = base + rng.normal(0, 8, (k, 4))
        box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)
        cls = np.where(rng.random(k) < 0.8, gt.classes[j] if m else 0, rng.integers(0, 6, k))
        preds.append(Boxes(box, cls, rng.random(k)))
        gts.append(gt)
    return preds, gts


def test_synthetic_parity() -> None:
    preds, gts = synthetic_set()
    lib50, lib5095 = library_maps(preds, gts)
    assert map_at(preds, gts) == pytest.approx(lib50, abs=1e-4)
    assert map_range(preds, gts) == pytest.approx(lib5095, abs=1e-4)


def test_coco128_parity(dataset, yf_entry: Path) -> None:
    items = load_coco128(dataset("coco128_val"))
    det = load_detector(yf_entry, intra_op_threads=1)
    preds, gts = [], []
    for item in items:
        with Image.open(item.image_path) as im:
            image = np.asarray(im.convert("RGB"))
        preds.append(predictions_to_boxes(det.detect(image, 0.01)))
        gts.append(item.ground_truth(image.shape[1], image.shape[0]))
    lib50, lib5095 = library_maps(preds, gts)
    assert map_at(preds, gts) == pytest.approx(lib50, abs=1e-4)
    assert map_range(preds, gts) == pytest.approx(lib5095, abs=1e-4)
