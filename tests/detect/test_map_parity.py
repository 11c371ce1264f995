"""mAP parity on the same detections: the pycocotools-backed scorer (training.detect.coco_map) against the
project's former numpy scorer (values recorded at commit 5ef19b3, just before it was removed) and against
pycocotools' own default ``summarize()``: a synthetic set (always runs) and Yolo-FastestV2 on coco128_val."""

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

# (mAP@0.5, mAP@0.5:0.95, VOC all-point mAP@0.5) of the former numpy scorer on the same detections.
FORMER_SYNTHETIC = (0.18953047044332588, 0.05688083429243806, 0.18739024774039706)
FORMER_COCO128 = (0.3363925090368986, 0.18676344927838037, 0.33459418283590875)


def scores(preds: list[Boxes], gts: list[Boxes]) -> tuple[float, float, float]:
    return map_at(preds, gts), map_range(preds, gts), map_at(preds, gts, interpolation="voc_all")


def pycocotools_summary(preds: list[Boxes], gts: list[Boxes]) -> tuple[float, float]:
    """(AP@0.5, AP@0.5:0.95) from pycocotools' default parameters and ``summarize()`` (stats[1], stats[0])."""
    from pycocotools.cocoeval import COCOeval

    ours = coco_evaluate(preds, gts)
    ev = COCOeval(ours.cocoGt, ours.cocoDt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


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
    got = scores(preds, gts)
    assert got == pytest.approx(FORMER_SYNTHETIC, abs=1e-4)
    assert got[:2] == pytest.approx(pycocotools_summary(preds, gts), abs=1e-4)


def test_coco128_parity(dataset, yf_entry: Path) -> None:
    items = load_coco128(dataset("coco128_val"))
    det = load_detector(yf_entry, intra_op_threads=1)
    preds, gts = [], []
    for item in items:
        with Image.open(item.image_path) as im:
            image = np.asarray(im.convert("RGB"))
        preds.append(predictions_to_boxes(det.detect(image, 0.01)))
        gts.append(item.ground_truth(image.shape[1], image.shape[0]))
    got = scores(preds, gts)
    assert got == pytest.approx(FORMER_COCO128, abs=1e-4)
    assert got[:2] == pytest.approx(pycocotools_summary(preds, gts), abs=1e-4)
