"""The clean images (with their YOLO labels where present) that ``dir-train align`` trains on, and the
step-indexed batches cut from them: square crops, flips, boxes moved with them, ISP-degraded views.

Boxes are YOLO rows (class, cx, cy, w, h) normalised to [0, 1] by the image (or crop) width and height.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from training.data import load_rgb
from training.detect.coco_map import read_yolo_labels
from training.errors import DataError
from training.isp import simulate
from training.paths import dataset_dir
from training.train.align.config import AlignData
from training.train.data import list_images, step_generator


@dataclass
class LabelledSet:
    """Decoded clean images, each (3, H, W) uint8 sRGB, with their boxes (M, 5) float32 (M may be 0) and
    whether each image has a label file (``has_labels``; an image without one has unknown objects, not
    none, and trains with the distillation loss only)."""

    images: list[Tensor]
    boxes: list[Tensor]
    files: list[Path]
    has_labels: list[bool]

    @property
    def labelled(self) -> bool:
        """Whether any image has a label file."""
        return any(self.has_labels)


def resolve_images(name: str) -> Path:
    """A dataset name (``coco128_train``) or a folder path -> the folder; a dataset with an ``images/``
    subfolder (YOLO layout) -> that subfolder."""
    p = Path(name).expanduser()
    folder = p if (p.is_absolute() or len(p.parts) > 1 or p.exists()) else dataset_dir(name)
    return folder / "images" if (folder / "images").is_dir() else folder


def label_path(image: Path, labels: Path | None) -> Path:
    """The YOLO label file of ``image``: ``labels/<stem>.txt`` when a labels folder is given, else the
    image's path with its last ``images`` folder replaced by ``labels`` and the suffix by ``.txt``."""
    if labels is not None:
        return labels / f"{image.stem}.txt"
    parts = list(image.with_suffix(".txt").parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def load_labelled(folders: list[Path], labels: Path | None) -> LabelledSet:
    """Decode every image of ``folders`` (sorted, recursive) with its labels (no file: no objects)."""
    files = [p for f in folders for p in list_images(f)]
    images, boxes, found = [], [], []
    for p in files:
        images.append(load_rgb(p))
        lab = label_path(p, labels)
        found.append(lab.is_file())
        try:
            rows = read_yolo_labels(lab)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        boxes.append(torch.from_numpy(rows.astype(np.float32)))
    return LabelledSet(images, boxes, files, found)


def crop_boxes(
    boxes: Tensor, size: tuple[int, int], window: tuple[int, int, int], flip: bool, min_visible: float
) -> Tensor:
    """Boxes (M, 5) of an image of ``size`` (H, W) -> the boxes of its square crop ``window`` (top, left,
    side): :func:`window_boxes` of the ``side`` x ``side`` window."""
    top, left, side = window
    return window_boxes(boxes, size, (top, left, side, side), flip, min_visible)


def window_boxes(
    boxes: Tensor,
    size: tuple[int, int],
    window: tuple[int, int, int, int],
    flip: bool,
    min_visible: float = 0.4,
) -> Tensor:
    """Boxes (M, 5) [class, cx, cy, w, h] normalised to an image of ``size`` (H, W) -> those of the window
    (top, left, height, width), normalised to it, mirrored when ``flip``; boxes with less than
    ``min_visible`` of their area inside the window are dropped, the rest clipped to it."""
    h, w = size
    top, left, wh, ww = window
    cls, cx, cy, bw, bh = (boxes[:, i] for i in range(5))
    x1, x2 = cx * w - bw * w / 2 - left, cx * w + bw * w / 2 - left
    y1, y2 = cy * h - bh * h / 2 - top, cy * h + bh * h / 2 - top
    area = (x2 - x1) * (y2 - y1)
    x1, x2, y1, y2 = x1.clamp(0, ww), x2.clamp(0, ww), y1.clamp(0, wh), y2.clamp(0, wh)
    kept = (x2 - x1) * (y2 - y1)
    keep = (kept > 0) & (kept >= min_visible * area)
    out = torch.stack(((x1 + x2) / 2 / ww, (y1 + y2) / 2 / wh, (x2 - x1) / ww, (y2 - y1) / wh), 1)
    if flip:
        out[:, 0] = 1.0 - out[:, 0]
    return torch.cat((cls[:, None], out), 1)[keep]


def sample_crops(
    data: LabelledSet, cfg: AlignData, min_visible: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One batch of clean crops and their targets, all randomness from ``generator``.

    Returns clean (B, 3, crop, crop) float32 sRGB [0, 1] and targets (M, 6) rows [image index, class, cx,
    cy, w, h] normalised to the crop (and so to a square detector input it is resized or letterboxed to).
    """
    idx = torch.randint(len(data.images), (cfg.batch_size,), generator=generator).tolist()
    crops, targets = [], []
    for b, i in enumerate(idx):
        im = data.images[i]
        h, w = im.shape[1], im.shape[2]
        scale = cfg.min_scale + (1.0 - cfg.min_scale) * float(torch.rand(1, generator=generator))
        side = max(4, round(min(h, w) * scale))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        flip = cfg.flip and bool(torch.rand(1, generator=generator) < 0.5)
        crop = im[None, :, top : top + side, left : left + side].float().div(255.0)
        crop = functional.interpolate(crop, size=(cfg.crop, cfg.crop), mode="bilinear", antialias=True)
        crops.append(crop.flip(-1) if flip else crop)
        rows = crop_boxes(data.boxes[i], (h, w), (top, left, side), flip, min_visible)
        targets.append(torch.cat((torch.full((len(rows), 1), float(b)), rows), 1))
    return torch.cat(crops).clamp(0.0, 1.0), torch.cat(targets)


def step_batch(
    data: LabelledSet, cfg: AlignData, min_visible: float, seed: int, step: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Step ``step``'s batch (a function of ``(seed, step)`` alone, so a resumed run replays it) on
    ``device``: clean y* and its ``cfg.preset`` degradation x, both (B, 3, crop, crop) sRGB [0, 1], and
    the targets (M, 6) of :func:`sample_crops`."""
    g = step_generator(seed, step)
    clean, targets = sample_crops(data, cfg, min_visible, g)
    degraded = simulate(clean, preset=cfg.preset, generator=g).degraded
    return clean.to(device), degraded.to(device), targets.to(device)
