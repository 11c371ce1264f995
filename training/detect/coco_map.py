"""Detection mAP (COCO-style and VOC-style) over YOLO-format labelled images; numpy + Pillow only.

Protocol (``interpolation="coco101"``, the default; on coco128_val it equals pycocotools' COCOeval to all
printed digits): per image and class keep the ``max_det`` (100) highest-scoring predictions (pycocotools'
maxDets rule); per class, predictions are matched greedily in descending score order to the unmatched
ground truth box of the same class with the highest IoU, a match needing IoU >= threshold (no crowd boxes
or area ranges: YOLO labels have neither). Precision is made monotone (non-increasing in recall) and
sampled at the 101 recall points 0, 0.01, ..., 1 (0 where the recall is never reached); AP is their mean.
Classes without ground truth in the dataset are left out of the mean; a class with ground truth but no
predictions scores 0. mAP@0.5:0.95 averages mAP over IoU 0.50, 0.55, ..., 0.95.

``interpolation="voc_all"`` is the all-point (area under the monotone precision/recall curve) AP of
VOC2010+, kept to compare with numbers reported that way (e.g. SOURCE.md's 0.331 for Yolo-FastestV2).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from training.paths import dataset_dir

Interpolation = Literal["coco101", "voc_all"]
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Boxes:
    """Boxes of one image: ``xyxy`` (K, 4) float pixels x1, y1, x2, y2; ``classes`` (K,) int;
    ``scores`` (K,) float for predictions (None for ground truth)."""

    xyxy: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(self.xyxy):
                raise ValueError(f"{len(self.xyxy)} boxes but {len(self.scores)} scores")
        if len(self.classes) != len(self.xyxy):
            raise ValueError(f"{len(self.xyxy)} boxes but {len(self.classes)} classes")

    @classmethod
    def empty(cls, with_scores: bool = False) -> Boxes:
        """No boxes (a prediction when ``with_scores``)."""
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0) if with_scores else None)


@dataclass
class LabelledImage:
    """One dataset image and its ground truth in pixels of the stored image (width x height)."""

    image_path: Path
    width: int
    height: int
    labels: np.ndarray = field(repr=False)  # (M, 5) class, cx, cy, w, h normalised to [0, 1]

    def ground_truth(self, width: int | None = None, height: int | None = None) -> Boxes:
        """Ground truth as pixel xyxy boxes for an image of ``width`` x ``height`` (default: stored size)."""
        w = self.width if width is None else width
        h = self.height if height is None else height
        lab = self.labels
        cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        xyxy = np.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        return Boxes(xyxy, lab[:, 0].astype(np.int64))


def read_yolo_labels(path: Path) -> np.ndarray:
    """A YOLO label file ("class cx cy w h" per line, normalised) -> (M, 5) floats; no file: (0, 5)."""
    path = Path(path)
    if not path.is_file():
        return np.zeros((0, 5))
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if len(r) != 5]
    if bad:
        raise ValueError(f"{path}: expected 5 fields per line (class cx cy w h), got {bad[0]}")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def load_yolo_dataset(images_dir: Path, labels_dir: Path) -> list[LabelledImage]:
    """Every image under ``images_dir`` (sorted) with ``labels_dir/<stem>.txt`` (absent file = no objects)."""
    images = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    out = []
    for p in images:
        with Image.open(p) as im:
            w, h = im.size
        out.append(LabelledImage(p, w, h, read_yolo_labels(Path(labels_dir) / f"{p.stem}.txt")))
    return out


def coco128_dirs(root: Path | None = None) -> tuple[Path, Path]:
    """(images dir, labels dir) of coco128_val (``dataset_dir("coco128_val")`` unless ``root`` given)."""
    root = dataset_dir("coco128_val") if root is None else Path(root)
    return root / "images" / "val2017", root / "labels" / "val2017"


def load_coco128(root: Path | None = None) -> list[LabelledImage]:
    """The 128 coco128_val images with their labels (898 boxes, class ids 0-79)."""
    return load_yolo_dataset(*coco128_dirs(root))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (K, 4) and (M, 4) xyxy boxes -> (K, M); empty unions give 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(pred: Boxes, gt: Boxes, thresholds: np.ndarray) -> np.ndarray:
    """(T, K) bool: prediction k (given highest score first) is a true positive at IoU threshold t."""
    tp = np.zeros((len(thresholds), len(pred.xyxy)), dtype=bool)
    for c in np.unique(pred.classes):
        pi = np.flatnonzero(pred.classes == c)
        gi = np.flatnonzero(gt.classes == c)
        if len(gi) == 0:
            continue
        ious = iou_matrix(pred.xyxy[pi], gt.xyxy[gi])
        for t, thr in enumerate(thresholds):
            taken = np.zeros(len(gi), dtype=bool)
            for row, k in enumerate(pi):
                cand = np.where(taken, -1.0, ious[row])
                j = int(cand.argmax())
                if cand[j] >= thr:
                    taken[j] = True
                    tp[t, k] = True
    return tp


def average_precision(
    recall: np.ndarray, precision: np.ndarray, interpolation: Interpolation = "coco101"
) -> float:
    """AP from a precision/recall curve ordered by descending score (recall non-decreasing)."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if interpolation == "coco101":
        points = np.linspace(0.0, 1.0, 101)
        idx = np.searchsorted(recall, points, side="left")
        return float(np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0).mean())
    if interpolation == "voc_all":
        r = np.concatenate(([0.0], recall))
        return float(np.sum((r[1:] - r[:-1]) * envelope))
    raise ValueError(f"unknown interpolation {interpolation!r}; use 'coco101' or 'voc_all'")


def ap_per_class(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Iterable[float] = (0.5,),
    interpolation: Interpolation = "coco101",
    max_det: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """(classes with ground truth (C,), AP (T, C) per IoU threshold) over a dataset of paired images."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} images")
    thresholds = np.asarray(list(iou_thresholds), dtype=np.float64)
    scores, classes, hits = [], [], []
    for pred, gt in zip(predictions, ground_truths, strict=True):
        if pred.scores is None:
            raise ValueError("predictions need scores")
        order = np.argsort(-pred.scores, kind="mergesort")
        rank = np.zeros(len(order), dtype=np.int64)  # position within its class, by descending score
        for c in np.unique(pred.classes):
            in_class = pred.classes[order] == c
            rank[in_class] = np.arange(int(in_class.sum()))
        order = order[rank < max_det]
        top = Boxes(pred.xyxy[order], pred.classes[order], pred.scores[order])
        scores.append(pred.scores[order])
        classes.append(top.classes)
        hits.append(_match(top, gt, thresholds))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_classes = np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64)
    all_hits = np.concatenate(hits, 1) if hits else np.zeros((len(thresholds), 0), bool)
    gt_classes = np.concatenate([g.classes for g in ground_truths]) if ground_truths else np.zeros(0)
    present, n_gt = np.unique(gt_classes.astype(np.int64), return_counts=True)
    ap = np.zeros((len(thresholds), len(present)))
    for ci, (c, n) in enumerate(zip(present, n_gt, strict=True)):
        sel = np.flatnonzero(all_classes == c)
        sel = sel[np.argsort(-all_scores[sel], kind="mergesort")]
        for t in range(len(thresholds)):
            tp = np.cumsum(all_hits[t, sel])
            fp = np.cumsum(~all_hits[t, sel])
            ap[t, ci] = average_precision(tp / n, tp / np.maximum(tp + fp, 1), interpolation)
    return present, ap


def map_at(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_threshold: float = 0.5,
    interpolation: Interpolation = "coco101",
    max_det: int = 100,
) -> float:
    """mAP at one IoU threshold (mean over classes with ground truth); 0.0 when there is no ground truth."""
    _, ap = ap_per_class(predictions, ground_truths, (iou_threshold,), interpolation, max_det)
    return float(ap.mean()) if ap.size else 0.0


def map_range(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Iterable[float] = COCO_IOU_THRESHOLDS,
    interpolation: Interpolation = "coco101",
    max_det: int = 100,
) -> float:
    """mAP averaged over IoU thresholds (default 0.50:0.05:0.95, i.e. COCO's mAP@0.5:0.95)."""
    _, ap = ap_per_class(predictions, ground_truths, iou_thresholds, interpolation, max_det)
    return float(ap.mean()) if ap.size else 0.0


def _coco_dataset(boxes: Sequence[Boxes], with_scores: bool, categories: list[int]) -> dict[str, Any]:
    """COCO-format dict (images, categories, annotations with ``bbox`` x, y, w, h pixels, ``area`` w*h)."""
    annotations = []
    for image_id, b in enumerate(boxes):
        wh = b.xyxy[:, 2:] - b.xyxy[:, :2]
        for k in range(len(b.xyxy)):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(b.classes[k]),
                "bbox": [float(b.xyxy[k, 0]), float(b.xyxy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
                "area": float(wh[k, 0] * wh[k, 1]),
                "iscrowd": 0,
            }
            if with_scores and b.scores is not None:
                ann["score"] = float(b.scores[k])
            annotations.append(ann)
    return {
        "images": [{"id": i} for i in range(len(boxes))],
        "categories": [{"id": c} for c in categories],
        "annotations": annotations,
    }


def coco_evaluate(predictions: Sequence[Boxes], ground_truths: Sequence[Boxes], max_det: int = 100) -> Any:
    """pycocotools' ``COCOeval`` (bbox) run on in-memory COCO dicts; returns it after ``evaluate()`` and
    ``accumulate()``: ``.eval["precision"]`` is (T=10 IoUs, R=101 recalls, K classes, 1 area, 1 maxDets).

    One area range ("all": YOLO labels have no crowd boxes or area annotations) and ``maxDets=[max_det]``
    (pycocotools keeps the ``max_det`` best per image and class). Category ids are the class ids.
    """
    from pycocotools.coco import COCO  # optional: numpy-only users of Boxes never need it
    from pycocotools.cocoeval import COCOeval  # optional

    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} images")
    if any(p.scores is None for p in predictions):
        raise ValueError("predictions need scores")
    classes = {int(c) for b in (*predictions, *ground_truths) for c in b.classes}
    categories = sorted(classes) or [0]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        gt, dt = COCO(), COCO()
        gt.dataset = _coco_dataset(ground_truths, False, categories)
        dt.dataset = _coco_dataset(predictions, True, categories)
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(range(len(ground_truths)))
        ev.params.catIds = categories
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.params.maxDets = [max_det]
        ev.evaluate()
        ev.accumulate()
    return ev

class SupportsDetect(Protocol):
    """What :func:`evaluate_detector` needs: ``modelstore.detector.Detector`` or anything alike."""

    def detect(self, image_rgb: np.ndarray, conf: float | None = None, iou: float | None = None) -> list[Any]:
        """(H, W, 3) uint8 RGB -> objects with ``.box`` (x1, y1, x2, y2 pixels), ``.score``, ``.class_id``."""
        ...


def predictions_to_boxes(detections: Sequence[Any]) -> Boxes:
    """Detection records (``.box``, ``.score``, ``.class_id``) -> :class:`Boxes` with scores."""
    if not detections:
        return Boxes.empty(with_scores=True)
    return Boxes(
        np.asarray([d.box for d in detections], dtype=np.float64),
        np.asarray([d.class_id for d in detections]),
        np.asarray([d.score for d in detections]),
    )


def evaluate_detector(
    detector: SupportsDetect,
    images_dir: Path,
    labels_dir: Path,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    conf: float | None = None,
    iou: float | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``detector`` on every image of a YOLO-format dataset and score it (COCO 101-point protocol).

    Each image is read as (H, W, 3) uint8 RGB, passed through ``transform`` (e.g. degrade, or degrade then
    restore; it must return uint8 RGB and may change the size: the normalised labels are scaled to the size
    it returns), then detected with ``conf`` (default: the detector's ``eval_conf`` attribute, else 0.001)
    and NMS ``iou`` (default: the detector's own). Returns mAP@0.5, mAP@0.5:0.95, the VOC all-point
    mAP@0.5, AP@0.5 per class present and the settings used.
    """
    dataset = load_yolo_dataset(images_dir, labels_dir)
    conf = float(getattr(detector, "eval_conf", 0.001)) if conf is None else conf
    preds: list[Boxes] = []
    gts: list[Boxes] = []
    for item in dataset:
        with Image.open(item.image_path) as im:
            image = np.asarray(im.convert("RGB"))
        if transform is not None:
            image = transform(image)
        preds.append(predictions_to_boxes(detector.detect(image, conf, iou)))
        gts.append(item.ground_truth(image.shape[1], image.shape[0]))
    present, ap = ap_per_class(preds, gts, COCO_IOU_THRESHOLDS)
    _, ap_voc = ap_per_class(preds, gts, (0.5,), "voc_all")
    names = list(class_names) if class_names is not None else list(getattr(detector, "class_names", []))
    return {
        "map50": float(ap[0].mean()) if ap.size else 0.0,
        "map50_95": float(ap.mean()) if ap.size else 0.0,
        "map50_voc_all_point": float(ap_voc.mean()) if ap_voc.size else 0.0,
        "protocol": "COCO-style 101-point interpolated AP, at most 100 detections per image and class",
        "n_images": len(dataset),
        "n_boxes": int(sum(len(g.classes) for g in gts)),
        "n_classes": len(present),
        "conf": conf,
        "nms_iou": iou if iou is not None else getattr(detector, "iou", None),
        "ap50_per_class": {
            (names[c] if c < len(names) else str(c)): float(a) for c, a in zip(present, ap[0], strict=True)
        },
    }
