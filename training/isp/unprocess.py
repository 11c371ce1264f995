"""Inverse ISP (Brooks et al. 2019): sRGB -> linear RGB -> camera RGB -> RAW Bayer mosaic.

Every function is pure and works on batched tensors on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.isp.ops import to_device
from training.isp.params import CFA_PATTERNS

#: Channel index (0 R, 1 G, 2 B) of each 2x2 site of a CFA pattern, row by row.
_CFA_CHANNELS = {p: tuple("RGB".index(ch) for ch in p) for p in CFA_PATTERNS}


def site_channels(cfa: Sequence[str], device: torch.device) -> torch.Tensor:
    """``(N, 4)`` int64: the channel (0 R, 1 G, 2 B) that each 2x2 site of each image's pattern samples."""
    return to_device(torch.tensor([_CFA_CHANNELS[pattern] for pattern in cfa], dtype=torch.int64), device)


def cfa_onehot(cfa: Sequence[str], device: torch.device) -> torch.Tensor:
    """``(N, 3, 2, 2)`` float32 one-hot: which channel each 2x2 site of each image's pattern samples."""
    onehot = torch.nn.functional.one_hot(site_channels(cfa, device), 3).to(torch.float32)
    return onehot.permute(0, 2, 1).reshape(len(cfa), 3, 2, 2)


def site_rows(values: torch.Tensor, width: int) -> torch.Tensor:
    """Per-site values ``(N, C, 2, 2)`` tiled along a pair of image rows: ``(N, C, 1, 2, width)``.

    Broadcasts against an ``(N, C, H, W)`` image viewed as ``(N, C, H / 2, 2, W)`` (``width = W`` even) with
    a contiguous innermost dimension, which elementwise kernels vectorise (a trailing size-2 site axis does
    not).
    """
    n, c = values.shape[:2]
    return values.view(n, c, 1, 2, 1, 2).expand(n, c, 1, 2, width // 2, 2).reshape(n, c, 1, 2, width)


def inverse_smoothstep(srgb: torch.Tensor) -> torch.Tensor:
    """Undo the smoothstep tone curve ``3x^2 - 2x^3``; ``[0, 1] -> [0, 1]``, any shape."""
    x = srgb.clamp(0.0, 1.0)
    # 1 - 2x and 0.5 - s in one pass each (rounded as x * -2 + 1 and -s + 0.5 are: 2x is exact).
    x = torch.sub(x.new_tensor(1.0), x, alpha=2.0, out=x).asin_().div_(3.0).sin_()
    return torch.sub(x.new_tensor(0.5), x, out=x)


def gamma_expansion(image: torch.Tensor, gamma: float = 2.2, out: torch.Tensor | None = None) -> torch.Tensor:
    """Display-encoded -> linear: ``max(x, 1e-8) ** gamma`` (as ``exp(gamma * log(x))``, faster on CPU).

    Any shape; the result goes into ``out`` when given (same shape, may be ``image`` itself).
    """
    x = image.clamp_min(1e-8) if out is None else torch.clamp_min(image, 1e-8, out=out)
    return x.log_().mul_(gamma).exp_()


def _inverse_gains(rgb_gain: torch.Tensor, red_gain: torch.Tensor, blue_gain: torch.Tensor) -> torch.Tensor:
    """The ``(N, 3, 1, 1)`` per-channel gains that undo white balance and digital gain."""
    ones = torch.ones_like(red_gain)
    return torch.cat([1.0 / red_gain, ones, 1.0 / blue_gain], dim=1) / rgb_gain


def _protect_highlights(image: torch.Tensor, grey: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``clip(image * max(mask + (1 - mask) * gains, gains), 0, 1)``, ``mask`` from the grey level.

    ``grey`` (consumed: it becomes the mask) broadcasts against ``image`` and ``gains``. Uses the identity
    ``max(mask + (1 - mask) * g, g) == g + mask * max(1 - g, 0)``.
    """
    inflection = 0.9
    mask = grey.sub_(inflection).clamp_min_(0.0).div_(1.0 - inflection).square_()
    safe_gains = (mask * (1.0 - gains).clamp_min(0.0)).add_(gains)
    return safe_gains.mul_(image).clamp_(0.0, 1.0)


def safe_invert_gains(
    image: torch.Tensor, rgb_gain: torch.Tensor, red_gain: torch.Tensor, blue_gain: torch.Tensor
) -> torch.Tensor:
    """Undo white balance and digital gain in camera RGB with highlight protection (Brooks et al.).

    ``image`` ``(N, 3, H, W)`` linear camera RGB in ``[0, 1]``; gains ``(N, 1, 1, 1)``. Pixels whose
    grey level exceeds 0.9 are blended towards gain 1 so that bright saturated highlights stay bright after
    the forward gains (which the forward ISP then clips). Returns ``(N, 3, H, W)`` in ``[0, 1]``.
    """
    gains = _inverse_gains(rgb_gain, red_gain, blue_gain)
    return _protect_highlights(image, image.mean(dim=1, keepdim=True), gains)


def mosaic(image: torch.Tensor, cfa: Sequence[str]) -> torch.Tensor:
    """Sample a Bayer mosaic: ``(N, 3, H, W)`` camera RGB, ``H, W`` even -> ``(N, 1, H, W)`` RAW.

    ``cfa[n]`` is image ``n``'s pattern (e.g. ``"RGGB"``: R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1)).
    One gather per 2x2 site over the whole batch; the values are copied exactly.
    """
    n, c, h, w = image.shape
    rows = site_channels(cfa, image.device) + c * torch.arange(n, device=image.device).view(n, 1)
    src = image.reshape(n * c, h // 2, 2, w // 2, 2)
    out = image.new_empty(n, 1, h, w)
    dst = out.view(n, h // 2, 2, w // 2, 2)
    for site in range(4):
        dy, dx = divmod(site, 2)
        dst[:, :, dy, :, dx] = src[:, :, dy, :, dx].index_select(0, rows[:, site])
    return out


def invert_gains_mosaic(
    image: torch.Tensor,
    cfa: Sequence[str],
    rgb_gain: torch.Tensor,
    red_gain: torch.Tensor,
    blue_gain: torch.Tensor,
) -> torch.Tensor:
    """``mosaic(safe_invert_gains(image, ...), cfa)``, bit for bit, evaluated only at the sampled sites.

    ``image`` ``(N, 3, H, W)`` linear camera RGB in ``[0, 1]``, ``H, W`` even; gains ``(N, 1, 1, 1)``.
    Returns the ``(N, 1, H, W)`` clean RAW mosaic in ``[0, 1]``: the grey level for highlight protection
    still comes from all three channels, the gains and clipping run on one value per pixel.
    """
    n, _, h, w = image.shape
    onehot = cfa_onehot(cfa, image.device).to(image.dtype)
    gains = (onehot * _inverse_gains(rgb_gain, red_gain, blue_gain)).sum(dim=1, keepdim=True)
    grey = image.mean(dim=1, keepdim=True).view(n, 1, h // 2, 2, w)
    sampled = mosaic(image, cfa).view(n, 1, h // 2, 2, w)
    return _protect_highlights(sampled, grey, site_rows(gains, w)).view(n, 1, h, w)
