"""Full-reference image metrics and the noise-level estimator shared by the peers.

Every function takes sRGB images in [0, 1] as float arrays or tensors of shape ``(3, H, W)`` or
``(N, 3, H, W)``; values are clipped to [0, 1] before scoring. PSNR/SSIM are computed on the float images
(no 8-bit rounding), per image, and the dataset score is the mean of the per-image scores.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from skimage.restoration import estimate_sigma

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got shape {tuple(t.shape)}")
    return t.clamp(0.0, 1.0)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def psnr(pred: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> list[float]:
    """Per-image PSNR in dB with peak 1.0: ``10 log10(1 / MSE)`` over all pixels and channels.

    Returns one value per image of the batch; ``inf`` where the images are identical.
    """
    p, r = _as_batch(pred), _as_batch(ref)
    _check_pair(p, r)
    mse = ((p - r) ** 2).flatten(1).mean(1)
    return [math.inf if m == 0 else 10.0 * math.log10(1.0 / m) for m in mse.tolist()]


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> list[float]:
    """Per-image SSIM (Wang et al. 2004) on RGB, averaged over channels.

    Variant: Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range 1.0, population
    (not sample) covariances, statistics only where the window fits inside the image ("valid" region), the
    mean of the SSIM map per channel, then the mean over the three channels. This matches
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)``.
    """
    p, r = _as_batch(pred), _as_batch(ref)
    _check_pair(p, r)
    h, w = p.shape[2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).numpy()
    r_ = SSIM_WINDOW // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian filter per (image, channel) plane, keeping only the valid region."""
        planes = t.flatten(0, 1).numpy()
        out = np.stack([cv2.sepFilter2D(pl, cv2.CV_64F, g, g)[r_ : h - r_, r_ : w - r_] for pl in planes])
        return torch.from_numpy(out).view(*t.shape[:2], h - 2 * r_, w - 2 * r_)

    mu_p, mu_r = blur(p), blur(r)
    var_p = blur(p * p) - mu_p**2
    var_r = blur(r * r) - mu_r**2
    cov = blur(p * r) - mu_p * mu_r
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    smap = ((2 * mu_p * mu_r + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_r**2 + c1) * (var_p + var_r + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1).tolist()


def estimate_noise_sigma(image: torch.Tensor | np.ndarray) -> float:
    """Noise standard deviation of one image ``(3, H, W)`` in [0, 1], on the [0, 1] scale.

    Estimator: ``skimage.restoration.estimate_sigma`` (Donoho's robust median: the median absolute value of
    the finest diagonal (HH) Daubechies-2 wavelet sub-band divided by 0.6745), per channel, averaged over
    the three channels. It assumes white Gaussian noise; on JPEG-compressed or spatially correlated noise it
    underestimates.
    """
    x = _as_batch(image)
    if x.shape[0] != 1:
        raise ValueError(f"estimate_noise_sigma takes one image, got a batch of {x.shape[0]}")
    hwc = x[0].permute(1, 2, 0).numpy()
    return float(estimate_sigma(hwc, channel_axis=-1, average_sigmas=True))
