"""mAP functions on hand-made cases, and evaluate_detector on a tiny YOLO-format dataset."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from training.detect.coco_map import (
    Boxes,
    evaluate_detector,
    load_coco128,
    map_at,
    map_range,
    read_yolo_labels,
)

GT = Boxes(np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.array([0, 0]))


def pred(boxes: list[list[float]], classes: list[int], scores: list[float]) -> Boxes:
    return Boxes(np.array(boxes, dtype=float), np.array(classes), np.array(scores))


def test_perfect_predictions_score_one() -> None:
    p = pred([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0], [0.9, 0.8])
    assert map_at([p], [GT]) == pytest.approx(1.0)
    assert map_range([p], [GT]) == pytest.approx(1.0)
    assert map_at([p], [GT], interpolation="voc_all") == pytest.approx(1.0)


def test_no_predictions_score_zero() -> None:
    assert map_at([Boxes.empty(with_scores=True)], [GT]) == 0.0
    assert map_range([Boxes.empty(with_scores=True)], [GT]) == 0.0
    wrong_class = pred([[0, 0, 10, 10]], [1], [0.9])
    assert map_at([wrong_class], [GT]) == 0.0


def test_known_partial_case() -> None:
    # TP (0.9), FP (0.8), TP (0.7): P/R = (1, .5), (.5, .5), (.67, 1); envelope 1 up to recall .5, then 2/3.
    p = pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], [0, 0, 0], [0.9, 0.8, 0.7])
    assert map_at([p], [GT]) == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert map_at([p], [GT], interpolation="voc_all") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A second class with ground truth but no predictions halves the mean; classes without GT are ignored.
    gt2 = Boxes(np.vstack((GT.xyxy, [[70, 70, 80, 80]])), np.array([0, 0, 1]))
    p_extra = pred([*p.xyxy.tolist(), [0, 0, 5, 5]], [0, 0, 0, 7], [0.9, 0.8, 0.7, 0.95])
    assert map_at([p_extra], [gt2]) == pytest.approx((51 + 50 * 2 / 3) / 101 / 2)


def test_duplicates_are_false_positives() -> None:
    gt = Boxes(np.array([[0, 0, 10, 10]]), np.array([0]))
    p = pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])
    assert map_at([p], [gt]) == pytest.approx(1.0)  # the duplicate ranks below the TP
    p_low = pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.8, 0.9])
    assert map_at([p_low], [gt]) == pytest.approx(1.0)  # identical boxes: whichever comes first matches
    p_fp_first = pred([[30, 30, 40, 40], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])
    assert map_at([p_fp_first], [gt]) == pytest.approx(0.5)


def test_iou_thresholds() -> None:
    gt = Boxes(np.array([[0, 0, 10, 10]]), np.array([0]))
    p = pred([[0, 0, 10, 6]], [0], [0.9])  # IoU 0.6: a match at 0.50, 0.55, 0.60 only
    assert map_at([p], [gt], 0.6) == pytest.approx(1.0)
    assert map_at([p], [gt], 0.65) == 0.0
    assert map_range([p], [gt]) == pytest.approx(0.3)


def test_max_det_per_image_and_class() -> None:
    gt = Boxes(np.array([[0, 0, 10, 10]]), np.array([0]))
    boxes = [[100.0 + i, 100.0, 110.0 + i, 110.0] for i in range(100)] + [[0.0, 0.0, 10.0, 10.0]]
    p = pred(boxes, [0] * 101, [0.9] * 100 + [0.1])
    assert map_at([p], [gt]) == 0.0  # the only true positive is the 101st of its class
    assert map_at([p], [gt], max_det=101) > 0.0


def test_multiple_images_pool_per_class() -> None:
    gts = [Boxes(np.array([[0, 0, 10, 10]]), np.array([0])), Boxes(np.array([[0, 0, 10, 10]]), np.array([0]))]
    preds = [pred([[0, 0, 10, 10]], [0], [0.9]), pred([[50, 50, 60, 60]], [0], [0.95])]
    # Pooled: FP (0.95), TP (0.9) -> recall 0.5 at precision 0.5.
    assert map_at(preds, gts) == pytest.approx(51 * 0.5 / 101)


def test_unknown_interpolation_and_empty_dataset() -> None:
    assert map_at([Boxes.empty(True)], [Boxes.empty()]) == 0.0  # no ground truth at all
    with pytest.raises(ValueError, match="'bogus'"):
        map_at([Boxes.empty(True)], [GT], interpolation="bogus")  # type: ignore[arg-type]


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 prediction sets for 1 images"):
        map_at([Boxes.empty(True), Boxes.empty(True)], [GT])
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        Boxes(np.zeros((2, 4)), np.zeros(2), np.zeros(1))


def test_read_yolo_labels(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("3 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.1 0.1\n")
    assert read_yolo_labels(tmp_path / "a.txt").shape == (2, 5)
    assert read_yolo_labels(tmp_path / "absent.txt").shape == (0, 5)
    (tmp_path / "b.txt").write_text("3 0.5 0.5\n")
    with pytest.raises(ValueError, match="5 fields"):
        read_yolo_labels(tmp_path / "b.txt")


class _OracleDetector:
    """Returns the single object every tiny-dataset image holds, in pixels of the image it is given."""

    eval_conf = 0.01

    def detect(
        self, image_rgb: np.ndarray, conf: float | None = None, iou: float | None = None
    ) -> list[object]:
        h, w = image_rgb.shape[:2]
        box = (0.25 * w, 0.25 * h, 0.75 * w, 0.5 * h)
        return [SimpleNamespace(box=box, score=0.9, class_id=2)]


def test_evaluate_detector_scales_labels_to_the_transformed_image(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i, (w, h) in enumerate(((64, 48), (40, 80))):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(images / f"{i}.png")
        (labels / f"{i}.txt").write_text("2 0.5 0.375 0.5 0.25\n")
    result = evaluate_detector(_OracleDetector(), images, labels, class_names=["a", "b", "c"])
    assert result["map50"] == result["map50_95"] == pytest.approx(1.0)
    assert (result["n_images"], result["n_boxes"], result["conf"]) == (2, 2, 0.01)
    assert result["ap50_per_class"] == {"c": pytest.approx(1.0)}

    def upscale(im: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(im, 2, 0), 2, 1)

    assert evaluate_detector(_OracleDetector(), images, labels, transform=upscale)[
        "map50_95"
    ] == pytest.approx(1.0)


def test_coco128_loader(dataset) -> None:
    items = load_coco128(dataset("coco128_val"))
    assert len(items) == 128
    assert sum(len(i.labels) for i in items) == 898
    gt = items[0].ground_truth()
    assert (gt.xyxy[:, 2] <= items[0].width + 1e-6).all() and (gt.xyxy >= -1e-6).all()
