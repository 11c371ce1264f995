"""Images in, degraded images out: the one image reader and the one seeded degradation of a dataset.

Training (held-out PSNR), ``dir-train score``, evaluation protocols, export parity inputs and scripts/ all
read images with :func:`load_rgb` and degrade clean images with :func:`degrade_seeded`, so the same file
under the same preset gives the same degraded tensor everywhere.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from training.errors import DataError
from training.isp import SimResult, render_without_noise, simulate, stable_seed


def load_rgb(path: Path) -> Tensor:
    """One image file -> (3, H, W) uint8 sRGB tensor; grayscale repeated to 3 channels, alpha dropped.

    Decoded by OpenCV, which applies a JPEG's EXIF orientation (the image as a viewer shows it) and reduces
    16-bit files to 8 bits. Raises :class:`DataError` on a missing or unreadable file.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path}")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).contiguous()


def load_rgb_batch(path: Path) -> Tensor:
    """One image file -> (1, 3, H, W) float32 sRGB in [0, 1] (:func:`load_rgb` divided by 255)."""
    return load_rgb(path).float().div(255.0).unsqueeze(0)


def _simulate_each(clean: Tensor, preset: str, dataset: str, names: list[str]) -> list[SimResult]:
    return [
        simulate(clean[i : i + 1], preset=preset, seed=[stable_seed(preset, dataset, name)])
        for i, name in enumerate(names)
    ]


def degrade_seeded(clean: Tensor, preset: str, dataset: str, names: list[str]) -> Tensor:
    """Reproducible degradation of a dataset's images: image ``i`` through ISP preset ``preset`` with the one
    seed ``stable_seed(preset, dataset, names[i])``, each image on its own (so its result does not depend on
    the others in the batch).

    ``clean``: (N, 3, H, W) float32 sRGB in [0, 1], N == len(names) -> (N, 3, H, W) float32 sRGB in [0, 1].
    ``dataset`` is the dataset's name (``"held-out"`` for a training run's held-out images).
    """
    return torch.cat([r.degraded for r in _simulate_each(clean, preset, dataset, names)])


def degrade_seeded_with_render(
    clean: Tensor, preset: str, dataset: str, names: list[str]
) -> tuple[Tensor, Tensor]:
    """:func:`degrade_seeded` and the noise-free rendering of each degraded image
    (:func:`training.isp.render_without_noise`, the ``denoise`` stage's target), both (N, 3, H, W) float32
    sRGB in [0, 1]."""
    runs = _simulate_each(clean, preset, dataset, names)
    return torch.cat([r.degraded for r in runs]), torch.cat([render_without_noise(r) for r in runs])
