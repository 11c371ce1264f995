"""Per-image NumPy reference of the same pipeline, written the way reference code usually is.

One ``(H, W, 3)`` float32 image at a time, SciPy ``ndimage`` convolutions for demosaicking (masks and
``convolve`` as in common demosaicking libraries) and blurs, Pillow for JPEG. It consumes the same
:class:`ISPParams` as the batched torch path and matches it to float32 precision when noise is off (the
noise realisations differ: NumPy's generator is seeded with ``noise_seed`` instead of torch's). It exists as
the baseline of ``benchmarks/isp_throughput.py`` and as an independent check of the torch stages in tests.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from training.isp.jpeg import jpeg_roundtrip_uint8
from training.isp.params import ISPParams
from training.isp.process import DEMOSAIC_KERNELS


def _masks(cfa: str, h: int, w: int) -> dict[str, np.ndarray]:
    """Boolean ``(H, W)`` masks of the R, G and B sites of pattern ``cfa``."""
    masks = {c: np.zeros((h, w), dtype=bool) for c in "RGB"}
    for site, channel in enumerate(cfa):
        masks[channel][site // 2 :: 2, site % 2 :: 2] = True
    return masks


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``ceil(3 sigma)`` (at least 1), as the torch path uses."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, 3)`` image, borders replicated."""
    k = _gaussian_kernel(sigma)
    out = ndimage.correlate1d(image, k, axis=0, mode="nearest")
    return ndimage.correlate1d(out, k, axis=1, mode="nearest")


def _demosaic(raw: np.ndarray, cfa: str, method: str) -> np.ndarray:
    """``(H, W)`` mosaic -> ``(H, W, 3)`` camera RGB with SciPy convolutions (mirror borders)."""
    m = _masks(cfa, *raw.shape)
    r_rows = np.any(m["R"], axis=1)[:, None] & np.ones_like(raw, dtype=bool)
    b_rows = np.any(m["B"], axis=1)[:, None] & np.ones_like(raw, dtype=bool)
    if method == "bilinear":
        k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
        k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0
        red = ndimage.convolve(raw * m["R"], k_rb, mode="mirror")
        green = ndimage.convolve(raw * m["G"], k_g, mode="mirror")
        blue = ndimage.convolve(raw * m["B"], k_rb, mode="mirror")
        return np.stack([red, green, blue], axis=-1)
    k = DEMOSAIC_KERNELS["malvar"].numpy()
    g_at_rb = ndimage.convolve(raw, k[0], mode="mirror")
    horizontal = ndimage.convolve(raw, k[1], mode="mirror")
    vertical = ndimage.convolve(raw, k[2], mode="mirror")
    diagonal = ndimage.convolve(raw, k[3], mode="mirror")
    green = np.where(m["G"], raw, g_at_rb)
    red = np.where(m["R"], raw, 0.0)
    red = np.where(m["G"] & r_rows, horizontal, red)
    red = np.where(m["G"] & b_rows, vertical, red)
    red = np.where(m["B"], diagonal, red)
    blue = np.where(m["B"], raw, 0.0)
    blue = np.where(m["G"] & b_rows, horizontal, blue)
    blue = np.where(m["G"] & r_rows, vertical, blue)
    blue = np.where(m["R"], diagonal, blue)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def degrade_image(clean: np.ndarray, p: ISPParams, *, jpeg: bool = True) -> np.ndarray:
    """Degrade one ``(H, W, 3)`` float32 sRGB image in ``[0, 1]`` (``H, W`` even) -> same shape and range."""
    h, w, _ = clean.shape
    rgb2cam = np.asarray(p.rgb2cam, dtype=np.float32)
    cam2rgb = np.asarray(p.cam2rgb, dtype=np.float32)
    # Inverse ISP.
    x = 0.5 - np.sin(np.arcsin(1.0 - 2.0 * np.clip(clean, 0.0, 1.0)) / 3.0)
    x = np.maximum(x, 1e-8) ** 2.2
    x = x @ rgb2cam.T
    gains = np.array([1.0 / p.red_gain, 1.0, 1.0 / p.blue_gain], dtype=np.float32) / p.rgb_gain
    gray = x.mean(axis=-1, keepdims=True)
    mask = (np.maximum(gray - 0.9, 0.0) / 0.1) ** 2
    x = np.clip(x * np.maximum(mask + (1.0 - mask) * gains, gains), 0.0, 1.0)
    m = _masks(p.cfa, h, w)
    raw = np.where(m["R"], x[..., 0], np.where(m["G"], x[..., 1], x[..., 2])).astype(np.float32)
    # Noise in RAW.
    rng = np.random.default_rng(p.noise_seed)
    z = rng.standard_normal((h, w), dtype=np.float32)
    noisy = raw
    in_raw = p.noise_domain == "raw"
    if in_raw and p.poisson_lambda > 0:
        noisy = (rng.poisson(np.maximum(raw, 0.0) / p.poisson_lambda) * p.poisson_lambda).astype(np.float32)
    sigma = p.gaussian_sigma if in_raw else 0.0
    variance = p.shot_noise * np.maximum(raw, 0.0) + p.read_noise + sigma**2
    raw = noisy + np.sqrt(variance).astype(np.float32) * z
    # Forward ISP.
    site_gain = np.where(m["R"], p.wb_red_gain, np.where(m["B"], p.wb_blue_gain, 1.0)) * p.digital_gain
    raw = np.clip(raw * site_gain.astype(np.float32), 0.0, 1.0)
    x = _demosaic(raw, p.cfa, p.demosaic)
    if p.denoise_sigma > 0:
        x = _blur(x, p.denoise_sigma)
    x = np.clip(x @ cam2rgb.T, 0.0, 1.0)
    x = np.maximum(x, 1e-8) ** (1.0 / p.gamma)
    x = x + p.tone_strength * (x * x * (3.0 - 2.0 * x) - x)
    if p.sharpen_amount > 0:
        x = np.clip(x + p.sharpen_amount * (x - _blur(x, p.sharpen_sigma)), 0.0, 1.0)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    # The protocol's noise on the camera's output, for noise_domain "srgb".
    if not in_raw and p.poisson_lambda > 0:
        x = (rng.poisson(x / p.poisson_lambda) * p.poisson_lambda).astype(np.float32)
    if not in_raw and p.gaussian_sigma > 0:
        x = x + np.float32(p.gaussian_sigma) * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    if jpeg and p.jpeg_quality is not None:
        rgb = np.round(x * 255.0).astype(np.uint8)
        x = jpeg_roundtrip_uint8(rgb, p.jpeg_quality).astype(np.float32) / 255.0
    return x
