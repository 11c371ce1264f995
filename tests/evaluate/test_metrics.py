"""Metric functions against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from training.evaluate.metrics import estimate_noise_sigma, psnr, ssim


def _smooth_image(h: int = 48, w: int = 64) -> torch.Tensor:
    """A smooth (3, H, W) float64 test pattern in [0.2, 0.8]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack(
        [0.5 + 0.3 * torch.sin(3 * x), 0.5 + 0.3 * torch.cos(2 * y), 0.2 + 0.6 * x * y]
    ).double()


def test_psnr_of_a_known_mse() -> None:
    ref = _smooth_image()
    pred = ref + 0.1  # values stay inside [0, 1]: MSE = 0.01 -> 20 dB
    assert psnr(pred, ref)[0] == pytest.approx(20.0, abs=1e-6)


def test_psnr_identical_is_infinite_and_batched() -> None:
    ref = _smooth_image().unsqueeze(0).repeat(2, 1, 1, 1)
    pred = ref.clone()
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    values = psnr(pred, ref)
    assert math.isinf(values[0])
    assert values[1] == pytest.approx(40.0, abs=1e-6)


def test_psnr_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    ref = _smooth_image()
    assert ssim(ref, ref)[0] == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    assert ssim(noisy, ref)[0] < 0.9


def test_ssim_matches_skimage_gaussian_variant() -> None:
    ref = _smooth_image()
    g = torch.Generator().manual_seed(1)
    noisy = (ref + 0.08 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    expected = structural_similarity(
        noisy.permute(1, 2, 0).numpy().astype(np.float64),
        ref.permute(1, 2, 0).numpy().astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )
    assert ssim(noisy, ref)[0] == pytest.approx(expected, abs=1e-6)


def test_noise_sigma_estimate_on_white_noise() -> None:
    ref = _smooth_image(128, 128)
    g = torch.Generator().manual_seed(2)
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=g)
    assert estimate_noise_sigma(noisy.clamp(0, 1)) == pytest.approx(0.05, rel=0.15)
