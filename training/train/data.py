"""Clean training images: folder scan with clear errors, in-memory uint8 store, random patch batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from training.train.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Provenance / documentation files that may sit next to images in a dataset folder.
DOC_SUFFIXES = frozenset({".md", ".txt", ".rst"})


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted).

    Raises :class:`DataError` if the folder is missing, holds no images, or holds files that are neither
    images nor documentation (``*.md``, ``*.txt``, ``*.rst``); hidden files are ignored.
    """
    if not folder.is_dir():
        raise DataError(f"training data folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    foreign = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES | DOC_SUFFIXES]
    if foreign:
        shown = ", ".join(str(p.relative_to(folder)) for p in foreign[:5])
        raise DataError(f"{folder} holds {len(foreign)} non-image file(s): {shown}")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"training data folder {folder} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return images


def load_rgb(path: Path) -> Tensor:
    """One image file -> (3, H, W) uint8 sRGB tensor (raises :class:`DataError` on unreadable files)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class ImageStore:
    """Decoded training and held-out images, each (3, H, W) uint8 sRGB."""

    train: list[Tensor]
    val: list[Tensor]
    train_files: list[Path]
    val_files: list[Path]


def load_store(folder: Path, val_images: int, min_size: int) -> ImageStore:
    """Decode every image under ``folder``; the last ``val_images`` (sorted by path) are held out.

    Images smaller than ``min_size`` on either side raise :class:`DataError`.
    """
    files = list_images(folder)
    if len(files) <= val_images:
        raise DataError(f"{folder} has {len(files)} images; need more than data.val_images={val_images}")
    images = [load_rgb(p) for p in files]
    small = [p.name for p, im in zip(files, images, strict=True) if min(im.shape[1:]) < min_size]
    if small:
        raise DataError(f"{len(small)} image(s) under {folder} are smaller than {min_size} px: {small[:5]}")
    cut = len(files) - val_images
    return ImageStore(images[:cut], images[cut:], files[:cut], files[cut:])


def sample_batch(images: list[Tensor], batch_size: int, patch: int, generator: torch.Generator) -> Tensor:
    """Random patches with random horizontal flips -> (batch_size, 3, patch, patch) float32 sRGB [0, 1].

    All randomness comes from ``generator`` (CPU), so a saved generator state replays the same batches.
    """
    idx = torch.randint(len(images), (batch_size,), generator=generator).tolist()
    out = []
    for i in idx:
        im = images[i]
        h, w = im.shape[1], im.shape[2]
        top = int(torch.randint(h - patch + 1, (1,), generator=generator))
        left = int(torch.randint(w - patch + 1, (1,), generator=generator))
        crop = im[:, top : top + patch, left : left + patch]
        if bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).float().div_(255.0)


def center_crops(images: list[Tensor], size: int) -> Tensor:
    """Centre crops of each image -> (N, 3, size, size) float32 sRGB [0, 1] (the held-out PSNR set)."""
    out = []
    for im in images:
        h, w = im.shape[1], im.shape[2]
        top, left = (h - size) // 2, (w - size) // 2
        out.append(im[:, top : top + size, left : left + size])
    return torch.stack(out).float().div_(255.0)
