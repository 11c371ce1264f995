"""Inverse ISP stages and the round trip process(unprocess(x)) with exact parameters and no noise.

Measured on cset14 ``lenna.png`` (480x500) for three camera draws: 32.7 dB (Malvar) / 30.5 dB (bilinear) on
the image as stored, which is the demosaicking limit of a 2x2 Bayer sampling of an unfiltered image; with a
Gaussian optical low-pass filter of sigma 1 px in front of the mosaic (as real cameras have) 45.1-45.5 dB
(Malvar) and 42.2-42.6 dB (bilinear). Without the mosaic the colour path is exact to float32 rounding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.isp import get_preset, process, sample_params, unprocess
from training.isp.ops import apply_ccm, gaussian_blur, per_image
from training.isp.process import gamma_compression, tone_curve
from training.isp.unprocess import (
    cfa_onehot,
    gamma_expansion,
    inverse_smoothstep,
    invert_gains_mosaic,
    mosaic,
    safe_invert_gains,
    site_channels,
    site_rows,
)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_with_optical_low_pass_exceeds_40_db(lenna: torch.Tensor, seed: int) -> None:
    x = gaussian_blur(lenna, [1.0])
    p = dataclasses.replace(sample_params(get_preset("train"), seed).exact(), demosaic="malvar")
    assert psnr(process(unprocess(x, [p]), [p]), x) > 44.0


@pytest.mark.parametrize(("method", "bound"), [("malvar", 32.0), ("bilinear", 30.0)])
def test_round_trip_on_the_stored_image_is_demosaic_limited(
    lenna: torch.Tensor, method: str, bound: float
) -> None:
    p = dataclasses.replace(sample_params(get_preset("train"), 0).exact(), demosaic=method)
    assert psnr(process(unprocess(lenna, [p]), [p]), lenna) > bound


def test_colour_path_without_mosaic_is_exact(lenna: torch.Tensor) -> None:
    p = sample_params(get_preset("train"), 5).exact()
    ones = torch.ones(1, 1, 1, 1)
    rgb2cam = torch.tensor(p.rgb2cam).unsqueeze(0)
    x = torch.clamp(lenna, 0.0, 0.85)  # below the highlight-protection knee
    cam = safe_invert_gains(
        apply_ccm(gamma_expansion(inverse_smoothstep(x)), rgb2cam),
        *(per_image([v], x) for v in (1.3, 2.0, 1.7)),
    )
    gains = per_image([1.3], x) * torch.cat([per_image([2.0], x), ones, per_image([1.7], x)], dim=1)
    back = apply_ccm((cam * gains).clamp(0, 1), torch.tensor(p.cam2rgb).unsqueeze(0)).clamp(0, 1)
    back = tone_curve(gamma_compression(back, per_image([2.2], x)), ones)
    assert psnr(back, x) > 70.0


def test_inverse_smoothstep_inverts_smoothstep() -> None:
    x = torch.linspace(0, 1, 1001)
    assert torch.allclose(tone_curve(inverse_smoothstep(x), torch.ones(1)), x, atol=1e-6)


def test_highlight_protection_keeps_white_white() -> None:
    white = torch.ones(1, 3, 2, 2)
    g = per_image([1.25], white)
    out = safe_invert_gains(white, g, per_image([2.2], white), per_image([1.8], white))
    assert torch.allclose(out, white)


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_mosaic_samples_the_pattern(cfa: str) -> None:
    x = torch.stack([torch.full((4, 4), v) for v in (0.1, 0.5, 0.9)]).unsqueeze(0)
    raw = mosaic(x, [cfa])
    assert raw.shape == (1, 1, 4, 4)
    expected = [{"R": 0.1, "G": 0.5, "B": 0.9}[c] for c in cfa]
    assert raw[0, 0, :2, :2].flatten().tolist() == pytest.approx(expected)
    assert torch.equal(raw[..., :2, :2], raw[..., 2:, 2:])


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_cfa_tables_agree(cfa: str) -> None:
    channels = site_channels([cfa, "RGGB"], torch.device("cpu"))
    onehot = cfa_onehot([cfa, "RGGB"], torch.device("cpu"))
    assert channels[0].tolist() == ["RGB".index(c) for c in cfa]
    assert torch.equal(onehot.argmax(dim=1).flatten(1), channels) and torch.equal(
        onehot.sum(dim=1), torch.ones(2, 2, 2)
    )
    rows = site_rows(onehot, 6)
    assert rows.shape == (2, 3, 1, 2, 6)
    assert torch.equal(rows[..., 2:4], onehot.view(2, 3, 1, 2, 2)) and torch.equal(
        rows[..., :2], rows[..., 4:]
    )


def test_invert_gains_mosaic_is_bit_identical_to_the_full_image_path() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 10, 14, generator=g) * 0.3 + 0.7  # many pixels above the highlight knee
    cfa = ["RGGB", "GBRG", "BGGR", "GRBG"]
    gains = [per_image(v, x) for v in ([1.1, 1.3, 0.9, 1.6], [2.0, 1.9, 2.4, 2.1], [1.7, 1.5, 1.9, 1.6])]
    expected = mosaic(safe_invert_gains(x, *gains), cfa)
    assert torch.equal(invert_gains_mosaic(x, cfa, *gains), expected)
