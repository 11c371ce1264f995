"""Small tensor helpers shared by the ISP stages: per-image parameters, colour matrices, Gaussian blur."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def per_image(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-image scalars as an ``(N, 1, 1, 1)`` tensor with ``like``'s dtype and device."""
    return torch.tensor(list(values), dtype=like.dtype).view(-1, 1, 1, 1).to(like.device)


def apply_ccm(image: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
    """Per-image colour matrix: ``(N, 3, H, W)`` linear image, ``ccm`` ``(N, 3, 3)`` -> ``(N, 3, H, W)``.

    Output channel ``i`` is ``sum_j ccm[n, i, j] * image[n, j]`` (the matrix acts on column vectors).
    """
    n, c, h, w = image.shape
    return torch.bmm(ccm.to(image), image.reshape(n, c, h * w)).view(n, c, h, w)


def gaussian_kernels(sigma: Sequence[float], device: torch.device) -> torch.Tensor:
    """1-D Gaussian kernels ``(N, K)``, one per sigma in pixels, all of one odd length ``K``.

    ``K = 2 * ceil(3 * max(sigma)) + 1``; a sigma of 0 gives the identity (a centred delta).
    """
    radius = max(1, math.ceil(3.0 * max(sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = torch.tensor(list(sigma), dtype=torch.float32).clamp_min(1e-6).view(-1, 1)
    k = torch.exp(-0.5 * (x / s) ** 2)
    return (k / k.sum(dim=1, keepdim=True)).to(device)


def gaussian_blur(image: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image; ``(N, C, H, W)`` -> same shape.

    Borders are replicated. All images run in one grouped convolution per axis.
    """
    n, c, h, w = image.shape
    k = gaussian_kernels(sigma, image.device).to(image.dtype)
    r = k.shape[1] // 2
    weight = k.repeat_interleave(c, dim=0)
    x = image.reshape(1, n * c, h, w)
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, weight.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, weight.view(n * c, 1, -1, 1), groups=n * c)
    return x.view(n, c, h, w)
