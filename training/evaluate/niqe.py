"""NIQE (Mittal, Soundararajan, Bovik 2013), a no-reference quality score, with a pristine model fitted here.

The published NIQE ships a pristine model (mean and covariance of natural-scene-statistics features) fitted
on 125 pristine photos that are not available locally. We fit the same model on the clean photos of
``bsds500_train`` (never an evaluation set), so absolute values differ from published NIQE numbers; lower
is better and values compare only with each other.

Features (36 per patch): at 2 scales (full, half by bicubic resize), on the MSCN coefficients of the
luminance (Gaussian window 7x7, sigma 7/6, C = 1 on the 0-255 scale): the GGD fit (shape, variance) of the
coefficients and the AGGD fit (shape, mean, left variance, right variance) of their products with the
horizontal, vertical and two diagonal neighbours. Patches are 96x96 at full scale; pristine patches are
kept where their mean local deviation exceeds 0.75 x the image's sharpest patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import gamma as gamma_fn

from training.evaluate.errors import DatasetMissingError
from training.paths import dataset_dir

PATCH = 96
SHARPNESS_KEEP = 0.75
PRISTINE_DATASET = "bsds500_train"
PRISTINE_IMAGES = 120
_SHAPES = np.arange(0.2, 10.0, 0.001)
_R_GGD = gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES) / gamma_fn(2 / _SHAPES) ** 2
_R_AGGD = gamma_fn(2 / _SHAPES) ** 2 / (gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES))


def _luma_255(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] -> (H, W) float64 luminance (BT.601) in [0, 255]."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float64) * 255.0


def _mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = gaussian_filter(gray, 7 / 6, truncate=2.5)
    sigma = np.sqrt(np.abs(gaussian_filter(gray * gray, 7 / 6, truncate=2.5) - mu * mu))
    return (gray - mu) / (sigma + 1.0), sigma


def _ggd(x: np.ndarray) -> tuple[float, float]:
    var = float(np.mean(x * x))
    e = float(np.mean(np.abs(x)))
    rho = var / (e * e + 1e-12)
    return float(_SHAPES[np.argmin(np.abs(rho - _R_GGD))]), var


def _aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    left, right = x[x < 0], x[x > 0]
    l_sig = float(np.sqrt(np.mean(left * left))) if left.size else 1e-6
    r_sig = float(np.sqrt(np.mean(right * right))) if right.size else 1e-6
    g = l_sig / max(r_sig, 1e-12)
    r_hat = float(np.mean(np.abs(x))) ** 2 / (float(np.mean(x * x)) + 1e-12)
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g * g + 1) ** 2
    alpha = float(_SHAPES[np.argmin((_R_AGGD - r_norm) ** 2)])
    mean = (
        (r_sig - l_sig)
        * gamma_fn(2 / alpha)
        / gamma_fn(1 / alpha)
        * np.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))
    )
    return alpha, float(mean), l_sig * l_sig, r_sig * r_sig


def _patch_features(m: np.ndarray) -> list[float]:
    feats = list(_ggd(m))
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = np.roll(m, (-dy, -dx), axis=(0, 1))
        feats += _aggd((m * shifted)[: m.shape[0] - 1, 1 : m.shape[1] - 1])
    return feats


def _features(rgb: np.ndarray, pristine: bool) -> np.ndarray:
    """(P, 36) features of the 96x96 patches of one image (sharp patches only when ``pristine``)."""
    gray = _luma_255(rgb)
    h, w = (gray.shape[0] // PATCH) * PATCH, (gray.shape[1] // PATCH) * PATCH
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs images of at least {PATCH}x{PATCH}, got {gray.shape}")
    gray = gray[:h, :w]
    half = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
    per_scale = []
    sharp = None
    for img, p in ((gray, PATCH), (half, PATCH // 2)):
        m, sigma = _mscn(img)
        rows = []
        sharpness = []
        for y in range(0, img.shape[0] - p + 1, p):
            for x in range(0, img.shape[1] - p + 1, p):
                rows.append(_patch_features(m[y : y + p, x : x + p]))
                sharpness.append(float(sigma[y : y + p, x : x + p].mean()))
        per_scale.append(np.asarray(rows))
        if sharp is None:
            s = np.asarray(sharpness)
            sharp = s > SHARPNESS_KEEP * s.max() if pristine else np.ones_like(s, dtype=bool)
    feats = np.concatenate(per_scale, axis=1)
    assert sharp is not None
    return feats[sharp]


@dataclass(frozen=True)
class PristineModel:
    """Mean (36,) and covariance (36, 36) of pristine patch features."""

    mean: np.ndarray
    cov: np.ndarray
    source: str


def fit_pristine(folder: Path, max_images: int = PRISTINE_IMAGES) -> PristineModel:
    """Fit the pristine model on the first ``max_images`` images (sorted, recursive) under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:max_images]
    if not files:
        raise DatasetMissingError(f"no pristine images for NIQE under {folder}")
    feats = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetMissingError(f"cannot read image {f}")
        feats.append(_features(bgr[..., ::-1].astype(np.float64) / 255.0, pristine=True))
    allf = np.concatenate(feats)
    return PristineModel(allf.mean(0), np.cov(allf, rowvar=False), f"{len(files)} images of {folder}")


@lru_cache(maxsize=1)
def default_pristine() -> PristineModel:
    """The pristine model fitted on ``bsds500_train`` (computed once per process)."""
    folder = dataset_dir(PRISTINE_DATASET)
    if not folder.is_dir():
        raise DatasetMissingError(f"NIQE's pristine images not found: {folder}")
    return fit_pristine(folder)


def niqe(image: torch.Tensor, model: PristineModel | None = None) -> float:
    """NIQE of one image ``(1, 3, H, W)`` (or ``(3, H, W)``) sRGB in [0, 1], H, W >= 96; lower is better."""
    x = image[0] if image.ndim == 4 else image
    rgb = x.detach().permute(1, 2, 0).clamp(0, 1).double().numpy()
    pm = model or default_pristine()
    feats = _features(rgb, pristine=False)
    mu = feats.mean(0)
    cov = np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros_like(pm.cov)
    d = pm.mean - mu
    return float(np.sqrt(d @ np.linalg.pinv((pm.cov + cov) / 2) @ d))
