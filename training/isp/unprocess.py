"""Inverse ISP (Brooks et al. 2019): sRGB -> linear RGB -> camera RGB -> RAW Bayer mosaic.

Every function is pure and works on batched tensors on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.isp.params import CFA_PATTERNS

#: Channel index (0 R, 1 G, 2 B) of each 2x2 site of a CFA pattern, row by row.
_CFA_CHANNELS = {p: tuple("RGB".index(ch) for ch in p) for p in CFA_PATTERNS}


def cfa_onehot(cfa: Sequence[str], device: torch.device) -> torch.Tensor:
    """``(N, 3, 2, 2)`` float32 one-hot: which channel each 2x2 site of each image's pattern samples."""
    onehot = torch.zeros(len(cfa), 3, 2, 2)
    for i, pattern in enumerate(cfa):
        for site, ch in enumerate(_CFA_CHANNELS[pattern]):
            onehot[i, ch, site // 2, site % 2] = 1.0
    return onehot.to(device)


def inverse_smoothstep(srgb: torch.Tensor) -> torch.Tensor:
    """Undo the smoothstep tone curve ``3x^2 - 2x^3``; ``[0, 1] -> [0, 1]``, any shape."""
    x = srgb.clamp(0.0, 1.0)
    return x.mul_(-2.0).add_(1.0).asin_().div_(3.0).sin_().neg_().add_(0.5)


def gamma_expansion(image: torch.Tensor, gamma: float = 2.2) -> torch.Tensor:
    """Display-encoded -> linear: ``max(x, 1e-8) ** gamma`` (as ``exp(gamma * log(x))``, faster on CPU)."""
    return image.clamp_min(1e-8).log_().mul_(gamma).exp_()


def safe_invert_gains(
    image: torch.Tensor, rgb_gain: torch.Tensor, red_gain: torch.Tensor, blue_gain: torch.Tensor
) -> torch.Tensor:
    """Undo white balance and digital gain in camera RGB with highlight protection (Brooks et al.).

    ``image`` ``(N, 3, H, W)`` linear camera RGB in ``[0, 1]``; gains ``(N, 1, 1, 1)``. Pixels whose
    grey level exceeds 0.9 are blended towards gain 1 so that bright saturated highlights stay bright after
    the forward gains (which the forward ISP then clips). Returns ``(N, 3, H, W)`` in ``[0, 1]``.
    """
    ones = torch.ones_like(red_gain)
    gains = torch.cat([1.0 / red_gain, ones, 1.0 / blue_gain], dim=1) / rgb_gain
    inflection = 0.9
    mask = image.mean(dim=1, keepdim=True).sub_(inflection).clamp_min_(0.0).div_(1.0 - inflection).square_()
    # max(mask + (1 - mask) * g, g) == g + mask * max(1 - g, 0), computed with one full-size temporary.
    safe_gains = (mask * (1.0 - gains).clamp_min(0.0)).add_(gains)
    return safe_gains.mul_(image).clamp_(0.0, 1.0)


def mosaic(image: torch.Tensor, cfa: Sequence[str]) -> torch.Tensor:
    """Sample a Bayer mosaic: ``(N, 3, H, W)`` camera RGB, ``H, W`` even -> ``(N, 1, H, W)`` RAW.

    ``cfa[n]`` is image ``n``'s pattern (e.g. ``"RGGB"``: R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1)).
    """
    n, _, h, w = image.shape
    onehot = cfa_onehot(cfa, image.device).to(image.dtype).view(n, 3, 1, 2, 1, 2)
    blocks = image.view(n, 3, h // 2, 2, w // 2, 2)
    return (blocks * onehot).sum(dim=1).view(n, 1, h, w)
