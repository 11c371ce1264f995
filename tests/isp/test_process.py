"""Forward ISP stages: demosaicking per CFA phase and method, gains, tone, sharpening."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.isp import CFA_PATTERNS, DEMOSAIC_METHODS
from training.isp.ops import per_image
from training.isp.process import (
    DEMOSAIC_KERNELS,
    apply_raw_gains,
    demosaic,
    denoise,
    gamma_compression,
    merge_phases,
    padded_phase_planes,
    unsharp_mask,
)
from training.isp.unprocess import mosaic


@pytest.mark.parametrize("cfa", CFA_PATTERNS)
@pytest.mark.parametrize("method", DEMOSAIC_METHODS)
def test_demosaic_is_exact_on_flat_and_linear_images(cfa: str, method: str) -> None:
    flat = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).expand(1, 3, 12, 16).contiguous()
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16) * torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    ramp = (ramp + torch.linspace(0, 0.3, 12).view(1, 1, 12, 1)).expand(1, 3, 12, 16).contiguous()
    for x in (flat, ramp):
        out = demosaic(mosaic(x, [cfa]), [cfa], [method])
        assert torch.allclose(out[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2], atol=1e-5)
    assert torch.allclose(demosaic(mosaic(flat, [cfa]), [cfa], [method]), flat, atol=1e-5)


def test_demosaic_kernels_preserve_dc() -> None:
    for kernels in DEMOSAIC_KERNELS.values():
        assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(4))


def test_mixed_batch_equals_one_by_one() -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(4, 1, 10, 12, generator=g)
    cfa, methods = ["RGGB", "GBRG", "RGGB", "BGGR"], ["malvar", "bilinear", "bilinear", "malvar"]
    batched = demosaic(raw, cfa, methods)
    for i in range(4):
        assert torch.allclose(
            batched[i : i + 1], demosaic(raw[i : i + 1], cfa[i : i + 1], methods[i : i + 1])
        )


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_both_merges_of_a_mixed_batch_are_bit_identical(device: str) -> None:
    raw = torch.rand(6, 1, 10, 12, generator=torch.Generator().manual_seed(2)).to(device)
    cfa = ["RGGB", "GBRG", "RGGB", "BGGR", "GRBG", "GBRG"]
    methods = ["malvar", "bilinear", "bilinear", "malvar", "malvar", "bilinear"]
    one_by_one = demosaic(raw, cfa, methods, merge_per_image=True)
    assert torch.equal(demosaic(raw, cfa, methods, merge_per_image=False), one_by_one)
    assert torch.equal(demosaic(raw, cfa, methods), one_by_one)


def test_demosaic_matches_a_plain_convolution() -> None:
    raw = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = demosaic(raw, ["RGGB"], ["malvar"])
    green_at_red = F.conv2d(
        F.pad(raw, (2, 2, 2, 2), mode="reflect"), DEMOSAIC_KERNELS["malvar"][:1].unsqueeze(1)
    )
    assert torch.allclose(out[:, 1, 0::2, 0::2], green_at_red[:, 0, 0::2, 0::2])


def test_gains_follow_the_pattern_and_clip() -> None:
    raw = torch.full((1, 1, 2, 2), 0.2)
    out = apply_raw_gains(raw, ["GRBG"], per_image([2.0], raw), per_image([2.0], raw), per_image([3.0], raw))
    assert out.flatten().tolist() == pytest.approx([0.4, 0.8, 1.0, 0.4])


def test_gamma_and_sharpen() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    gamma = per_image([2.2, 1.0], x)
    assert torch.allclose(gamma_compression(x, gamma)[0], x[0].clamp_min(1e-8) ** (1 / 2.2), atol=1e-6)
    assert torch.equal(unsharp_mask(x, [0.0, 0.0], [1.0, 1.0]), x)
    sharp = unsharp_mask(x, [1.0, 0.0], [1.0, 1.0])
    assert sharp[0].std() > x[0].std() and torch.allclose(sharp[1], x[1])


@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (1, 1, 4, 4), (3, 1, 8, 6)])
def test_phase_planes_match_pixel_unshuffle_of_the_padded_mosaic(shape: tuple[int, int, int, int]) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    expected = F.pixel_unshuffle(F.pad(x, (2, 2, 2, 2), mode="reflect"), 2)
    assert torch.equal(padded_phase_planes(x), expected)
    planes = F.pixel_unshuffle(x, 2)
    assert torch.equal(merge_phases(planes), x)
    out = torch.empty_like(x)
    assert merge_phases(planes, out=out) is out and torch.equal(out, x)


def test_phase_planes_refuse_odd_or_tiny_mosaics() -> None:
    with pytest.raises(ValueError, match="even sides >= 4"):
        padded_phase_planes(torch.zeros(1, 1, 5, 8))
    with pytest.raises(ValueError, match="even sides >= 4"):
        padded_phase_planes(torch.zeros(1, 1, 2, 8))


def test_denoise_filters_only_the_images_with_a_sigma() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = denoise(x, [0.0, 1.0, 0.0])
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert torch.allclose(out[1:2], denoise(x[1:2], [1.0])) and out[1].std() < x[1].std()
