"""Detection mAP over YOLO-format labelled images, scored by pycocotools' ``COCOeval`` (bbox).

Our detections and YOLO labels become COCO dicts in memory (no files): one image id per dataset image, the
class id as category id, boxes as x, y, w, h pixels, ``area`` = w * h, no crowd boxes. COCOeval then keeps
the ``max_det`` (100) highest-scoring predictions per image and class, matches greedily in descending score
order to the unmatched ground truth of the same class with the highest IoU (IoU >= threshold), makes the
precision monotone and samples it at the 101 recall points 0, 0.01, ..., 1; AP is their mean, over the
classes with ground truth (a class with ground truth and no predictions scores 0). mAP@0.5:0.95 averages
IoU 0.50, 0.55, ..., 0.95 (the thresholds rounded to 2 decimals; pycocotools' ``linspace`` ones differ by
1e-16, which flips a match at an IoU of exactly 0.6).

``interpolation="voc_all"`` is the all-point (area under the monotone precision/recall curve) AP of
VOC2010+, computed here from COCOeval's own per-image matches, kept to compare with numbers reported that
way (e.g. SOURCE.md's 0.331 for Yolo-FastestV2). The project's former numpy scorer gave the same values
(parity to 1e-15 on coco128_val and a synthetic set, docs/DECISIONS.md) and was removed in its favour.
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


def ap_per_class(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Iterable[float] = (0.5,),
    interpolation: Interpolation = "coco101",
    max_det: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """(classes with ground truth (C,), AP (T, C) per IoU threshold) over a dataset of paired images."""
    if interpolation not in ("coco101", "voc_all"):
        raise ValueError(f"unknown interpolation {interpolation!r}; use 'coco101' or 'voc_all'")
    present, coco101, voc_all = _evaluate(predictions, ground_truths, iou_thresholds, max_det)
    return present, coco101 if interpolation == "coco101" else voc_all


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


def _coco_dataset(boxes: Sequence[Boxes], categories: list[int]) -> dict[str, Any]:
    """COCO-format dict (images, categories, annotations with ``bbox`` x, y, w, h pixels, ``area`` w * h,
    and ``score`` where the boxes have scores)."""
    annotations: list[dict[str, Any]] = []
    for image_id, b in enumerate(boxes):
        wh = b.xyxy[:, 2:] - b.xyxy[:, :2]
        for k in range(len(b.xyxy)):
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(b.classes[k]),
                "bbox": [float(b.xyxy[k, 0]), float(b.xyxy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
                "area": float(wh[k, 0] * wh[k, 1]),
                "iscrowd": 0,
            }
            if b.scores is not None:
                ann["score"] = float(b.scores[k])
            annotations.append(ann)
    return {
        "images": [{"id": i} for i in range(len(boxes))],
        "categories": [{"id": c} for c in categories],
        "annotations": annotations,
    }


def coco_evaluate(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Iterable[float] = COCO_IOU_THRESHOLDS,
    max_det: int = 100,
) -> Any:
    """pycocotools' ``COCOeval`` (bbox) on in-memory COCO dicts, after ``evaluate()`` and ``accumulate()``:
    ``.eval["precision"]`` is (T thresholds, 101 recalls, K categories, 1 area, 1 maxDets), -1 for a
    category without ground truth; ``.evalImgs`` holds the per-image matches.

    One area range ("all": YOLO labels have no area annotations) and ``maxDets=[max_det]``. Category ids
    are the class ids (those of ground truth and predictions, sorted; ``.params.catIds``).
    """
    from pycocotools.coco import COCO  # optional: scoring needs it, the dataset helpers above do not
    from pycocotools.cocoeval import COCOeval  # optional

    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} images")
    if any(p.scores is None for p in predictions):
        raise ValueError("predictions need scores")
    categories = sorted({int(c) for b in (*predictions, *ground_truths) for c in b.classes}) or [0]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        gt, dt = COCO(), COCO()
        gt.dataset, dt.dataset = (
            _coco_dataset(ground_truths, categories),
            _coco_dataset(predictions, categories),
        )
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(range(len(ground_truths)))
        ev.params.catIds = categories
        ev.params.iouThrs = np.asarray(list(iou_thresholds), dtype=np.float64)
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.params.maxDets = [max_det]
        ev.evaluate()
        ev.accumulate()
    return ev


def _all_point_ap(ev: Any, k: int, n_images: int) -> np.ndarray:
    """VOC all-point AP (T,) of category index ``k`` from COCOeval's per-image matches."""
    items = [e for e in ev.evalImgs[k * n_images : (k + 1) * n_images] if e is not None]
    n_gt = sum(int((np.asarray(e["gtIgnore"]) == 0).sum()) for e in items)
    n_t = len(ev.params.iouThrs)
    if not items or n_gt == 0:
        return np.zeros(n_t)
    scores = np.concatenate([e["dtScores"] for e in items])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e["dtMatches"] for e in items], 1)[:, order] > 0
    ignored = np.concatenate([e["dtIgnore"] for e in items], 1)[:, order].astype(bool)
    tp = np.cumsum(matched & ~ignored, 1)
    fp = np.cumsum(~matched & ~ignored, 1)
    ap = np.zeros(n_t)
    for t in range(n_t):
        recall = np.concatenate(([0.0], tp[t] / n_gt))
        envelope = np.maximum.accumulate((tp[t] / np.maximum(tp[t] + fp[t], 1))[::-1])[::-1]
        ap[t] = float(np.sum(np.diff(recall) * envelope))
    return ap


def _evaluate(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Iterable[float],
    max_det: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes with ground truth (C,), COCO 101-point AP (T, C), VOC all-point AP (T, C))."""
    ev = coco_evaluate(predictions, ground_truths, iou_thresholds, max_det)
    precision = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
    keep = np.flatnonzero((precision > -1).all(axis=(0, 1)))
    present = np.asarray(ev.params.catIds, dtype=np.int64)[keep]
    coco101 = precision[:, :, keep].mean(1)
    voc_all = (
        np.stack([_all_point_ap(ev, k, len(ground_truths)) for k in keep.tolist()], 1)
        if len(keep)
        else coco101
    )
    return present, coco101, voc_all


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
    """Run ``detector`` on every image of a YOLO-format dataset and score it with pycocotools (101-point AP).

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
    present, ap, ap_voc_all = _evaluate(preds, gts, COCO_IOU_THRESHOLDS, 100)
    ap_voc = ap_voc_all[:1]
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
