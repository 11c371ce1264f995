"""Forward ISP stages: RAW Bayer mosaic -> camera RGB -> linear RGB -> sRGB.

Every function is pure and works on batched tensors on any device; per-image hyperparameters are
``(N, 1, 1, 1)`` tensors (or sequences where a stage groups images).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.isp.ops import gaussian_blur
from training.isp.unprocess import cfa_onehot, site_rows

# Demosaicking kernels on the raw mosaic, 5x5. Slot 0: green at a red/blue site; slot 1: red/blue at a
# green site whose horizontal neighbours have that colour; slot 2: same with vertical neighbours; slot 3:
# red at a blue site (and blue at a red site).
_BILINEAR = (
    torch.tensor(
        [
            [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]],
            [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 2, 0, 2, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
            [[0, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 0, 0]],
            [[0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]],
        ],
        dtype=torch.float32,
    )
    / 4.0
)
# Malvar, He and Cutler (ICASSP 2004), "High-quality linear interpolation for demosaicing of Bayer-patterned
# color images": the same four slots with gradient-corrected 5x5 filters.
_MALVAR = (
    torch.tensor(
        [
            [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]],
            [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]],
            [[0, 0, -1, 0, 0], [0, -1, 4, -1, 0], [0.5, 0, 5, 0, 0.5], [0, -1, 4, -1, 0], [0, 0, -1, 0, 0]],
            [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]],
        ],
        dtype=torch.float32,
    )
    / 8.0
)
DEMOSAIC_KERNELS = {"bilinear": _BILINEAR, "malvar": _MALVAR}


def apply_raw_gains(
    raw: torch.Tensor,
    cfa: Sequence[str],
    digital_gain: torch.Tensor,
    red_gain: torch.Tensor,
    blue_gain: torch.Tensor,
) -> torch.Tensor:
    """White balance and digital gain on the mosaic, then clip to the sensor range.

    ``raw`` ``(N, 1, H, W)``, gains ``(N, 1, 1, 1)`` -> ``(N, 1, H, W)`` in ``[0, 1]``.
    """
    n, _, h, w = raw.shape
    onehot = cfa_onehot(cfa, raw.device).to(raw.dtype)
    channel_gains = torch.cat([red_gain, torch.ones_like(red_gain), blue_gain], dim=1) * digital_gain
    tile = site_rows((onehot * channel_gains).sum(dim=1, keepdim=True), w)
    return (raw.view(n, 1, h // 2, 2, w) * tile).clamp_(0.0, 1.0).view(n, 1, h, w)


def _slot(site: str, channel: str, horizontal_neighbour: str) -> int:
    """Which estimate gives ``channel`` at a ``site``: 0 = the raw value itself, 1..4 = kernel slot 0..3."""
    if site == channel:
        return 0
    if channel == "G":
        return 1
    if site == "G":
        return 2 if horizontal_neighbour == channel else 3
    return 4


@functools.cache
def phase_weights(pattern: str, method: str) -> torch.Tensor:
    """The 5x5 Bayer kernels of ``method`` rewritten as one 3x3 convolution over the four phase planes.

    Input: the mosaic split into its 2x2 phases (``pixel_unshuffle``: channel ``2 * dy + dx`` holds the
    sites at row parity ``dy``, column parity ``dx``). Output channel ``4 * c + site`` is colour ``c`` (R, G,
    B) at that site, ready for ``pixel_shuffle``. Returns a ``(12, 4, 3, 3)`` float32 weight.
    """
    kernels = DEMOSAIC_KERNELS[method]
    weight = torch.zeros(12, 4, 3, 3)
    for site, site_colour in enumerate(pattern):
        dy, dx = divmod(site, 2)
        horizontal_neighbour = pattern[2 * dy + 1 - dx]
        for c, channel in enumerate("RGB"):
            slot = _slot(site_colour, channel, horizontal_neighbour)
            if slot == 0:
                weight[4 * c + site, site, 1, 1] = 1.0
                continue
            for i, j in kernels[slot - 1].nonzero().tolist():
                y, x = dy + i - 2, dx + j - 2
                weight[4 * c + site, 2 * (y % 2) + x % 2, y // 2 + 1, x // 2 + 1] += kernels[slot - 1, i, j]
    return weight


def phase_planes(image: torch.Tensor) -> torch.Tensor:
    """Split ``(N, C, H, W)`` (``H, W`` even) into its 2x2 phases: ``(N, 4 * C, H / 2, W / 2)``.

    Channel ``4 * c + 2 * dy + dx`` holds channel ``c`` at row parity ``dy``, column parity ``dx``: the
    layout of ``F.pixel_unshuffle(image, 2)``, computed as one strided copy.
    """
    n, c, h, w = image.shape
    blocks = image.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return blocks.contiguous().view(n, 4 * c, h // 2, w // 2)


def merge_phases(planes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`phase_planes`: ``(N, 4 * C, H / 2, W / 2)`` -> ``(N, C, H, W)``.

    The layout of ``F.pixel_shuffle(planes, 2)``, computed as one strided copy per phase.
    """
    n, c4, h2, w2 = planes.shape
    c = c4 // 4
    out = planes.new_empty(n, c, 2 * h2, 2 * w2)
    src = planes.view(n, c, 2, 2, h2, w2)
    dst = out.view(n, c, h2, 2, w2, 2)
    for dy in range(2):
        for dx in range(2):
            dst[:, :, :, dy, :, dx] = src[:, :, dy, dx]
    return out


def demosaic(raw: torch.Tensor, cfa: Sequence[str], methods: Sequence[str]) -> torch.Tensor:
    """Demosaic ``(N, 1, H, W)`` RAW (``H, W`` even) to ``(N, 3, H, W)`` camera RGB, linear, not clipped.

    Image ``n`` uses pattern ``cfa[n]`` and method ``methods[n]`` (``"bilinear"`` or ``"malvar"``). Both are
    the 5x5 convolutions of :data:`DEMOSAIC_KERNELS` with reflect padding (which keeps the Bayer phase at the
    borders), evaluated at half resolution on the phase planes (:func:`phase_weights`), one convolution per
    (pattern, method) group in the batch.
    """
    planes = phase_planes(F.pad(raw, (2, 2, 2, 2), mode="reflect"))
    keys = list(zip(cfa, methods, strict=True))
    groups = sorted(set(keys))
    if len(groups) == 1:
        return merge_phases(F.conv2d(planes, phase_weights(*groups[0]).to(raw)))
    n, _, h, w = raw.shape
    out = torch.empty(n, 12, h // 2, w // 2, dtype=raw.dtype, device=raw.device)
    for key in groups:
        index = torch.tensor([i for i, k in enumerate(keys) if k == key], device=raw.device)
        out.index_copy_(0, index, F.conv2d(planes.index_select(0, index), phase_weights(*key).to(raw)))
    return merge_phases(out)


def denoise(image: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Optional Gaussian denoise, one sigma (pixels, 0 = off) per image; ``(N, 3, H, W)`` -> same shape.

    Only the images with a positive sigma are filtered.
    """
    on = [i for i, s in enumerate(sigma) if s > 0]
    if not on:
        return image
    if len(on) == len(sigma):
        return gaussian_blur(image, sigma)
    index = torch.tensor(on, device=image.device)
    return image.index_copy(0, index, gaussian_blur(image.index_select(0, index), [sigma[i] for i in on]))


def gamma_compression(linear: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Linear -> display-encoded: ``max(x, 1e-8) ** (1 / gamma)``; ``gamma`` ``(N, 1, 1, 1)``."""
    return linear.clamp_min(1e-8).log_().div_(gamma).exp_()


def tone_curve(image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Global tone curve: ``(1 - s) x + s (3x^2 - 2x^3)``; ``s`` ``(N, 1, 1, 1)``; 1 = smoothstep."""
    smooth = image.mul(-2.0).add_(3.0).mul_(image).mul_(image).sub_(image)
    return smooth.mul_(strength).add_(image)


def unsharp_mask(image: torch.Tensor, amount: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Sharpen: ``x + amount * (x - blur_sigma(x))``, clipped to ``[0, 1]``; ``amount`` ``(N, 1, 1, 1)``.

    ``image`` ``(N, 3, H, W)`` sRGB; returns a new ``(N, 3, H, W)`` tensor in ``[0, 1]`` (only clipped when no
    image is sharpened).
    """
    if float(amount.max()) <= 0:
        return image.clamp(0.0, 1.0)
    detail = gaussian_blur(image, sigma)
    return torch.sub(image, detail, out=detail).mul_(amount).add_(image).clamp_(0.0, 1.0)
