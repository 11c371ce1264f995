"""Forward ISP stages: RAW Bayer mosaic -> camera RGB -> linear RGB -> sRGB.

Every function is pure and works on batched tensors on any device; per-image hyperparameters are
``(N, 1, 1, 1)`` tensors (or sequences where a stage groups images).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.isp.ops import gaussian_blur, gaussian_blur_chunks, per_image, to_device
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


def padded_phase_planes(raw: torch.Tensor) -> torch.Tensor:
    """The 2x2 phase planes of the reflect-padded mosaic, without the padded copy.

    ``F.pixel_unshuffle(F.pad(raw, (2, 2, 2, 2), mode="reflect"), 2)`` bit for bit: channel ``4 * c + 2 * dy
    + dx`` holds channel ``c`` at row parity ``dy``, column parity ``dx``. ``raw`` ``(N, C, H, W)``,
    ``H, W >= 4`` even -> ``(N, 4 * C, H / 2 + 2, W / 2 + 2)``. Reflecting the image
    by two pixels keeps each site's phase, so every phase plane is padded by one row/column from itself:
    reflected (one plane further in) at the border where the image's first/last pixel has that parity,
    replicated at the other border. Rows are padded first, then columns, which fills the corners as the
    2-D reflection does.
    """
    n, c, h, w = raw.shape
    if h < 4 or w < 4 or h % 2 or w % 2:
        raise ValueError(f"the mosaic must have even sides >= 4, got H={h} W={w}")
    h2, w2 = h // 2, w // 2
    planes = raw.new_empty(n, c, 2, 2, h2 + 2, w2 + 2)
    # A (column pair) of floats is one complex value: real part at even columns, imaginary at odd ones.
    pairs = torch.view_as_complex(raw.contiguous().view(n, c, h2, 2, w2, 2))
    for dy in range(2):
        planes[:, :, dy, 0, 1:-1, 1:-1] = pairs[:, :, :, dy].real
        planes[:, :, dy, 1, 1:-1, 1:-1] = pairs[:, :, :, dy].imag
    # Rows, then columns: each view is (N, C, parity, other parity, position, other position).
    for side in (planes, planes.permute(0, 1, 3, 2, 5, 4)):
        side[:, :, 0, :, 0] = side[:, :, 0, :, 2]
        side[:, :, 0, :, -1] = side[:, :, 0, :, -2]
        side[:, :, 1, :, 0] = side[:, :, 1, :, 1]
        side[:, :, 1, :, -1] = side[:, :, 1, :, -3]
    return planes.view(n, 4 * c, h2 + 2, w2 + 2)


def merge_phases(planes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Phase planes back to the image: ``(N, 4 * C, H / 2, W / 2)`` -> ``(N, C, H, W)``.

    The layout of ``F.pixel_shuffle(planes, 2)``, written into ``out`` (a contiguous ``(N, C, H, W)``
    tensor, or a new one) as one complex-valued copy per row parity: the two column phases of a row become
    the real and imaginary parts of one complex value, i.e. two adjacent floats.
    """
    n, c4, h2, w2 = planes.shape
    c = c4 // 4
    out = planes.new_empty(n, c, 2 * h2, 2 * w2) if out is None else out
    src = planes.view(n, c, 2, 2, h2, w2)
    dst = torch.view_as_complex(out.view(n, c, h2, 2, w2, 2))
    for dy in range(2):
        torch.complex(src[:, :, dy, 0], src[:, :, dy, 1], out=dst[:, :, :, dy])
    return out


def _weights(key: tuple[str, str], like: torch.Tensor) -> torch.Tensor:
    """:func:`phase_weights` of ``(pattern, method)`` with ``like``'s dtype and device."""
    return to_device(phase_weights(*key), like.device).to(like.dtype)


def demosaic(
    raw: torch.Tensor,
    cfa: Sequence[str],
    methods: Sequence[str],
    out: torch.Tensor | None = None,
    *,
    merge_per_image: bool | None = None,
) -> torch.Tensor:
    """Demosaic ``(N, 1, H, W)`` RAW (``H, W`` even) to ``(N, 3, H, W)`` camera RGB, linear, not clipped.

    Image ``n`` uses pattern ``cfa[n]`` and method ``methods[n]`` (``"bilinear"`` or ``"malvar"``). Both are
    the 5x5 convolutions of :data:`DEMOSAIC_KERNELS` with reflect padding (which keeps the Bayer phase at the
    borders), evaluated at half resolution on the phase planes (:func:`phase_weights`), one convolution per
    (pattern, method) group in the batch. The result goes into ``out`` when given: a contiguous
    ``(N, 3, H, W)`` tensor.

    With several groups, ``merge_per_image`` decides how the estimates become images (same result bit for
    bit): merged image by image straight into ``out`` (the default on the CPU, where a batch-sized
    temporary and its scatter cost 15% of the whole ISP), or scattered into one batch of estimates and
    merged once (the default elsewhere: a GPU is bound by kernel launches, and this takes a fixed number per
    group instead of several per image).
    """
    planes = padded_phase_planes(raw)
    keys = list(zip(cfa, methods, strict=True))
    groups = sorted(set(keys))
    if len(groups) == 1:
        return merge_phases(F.conv2d(planes, _weights(groups[0], raw)), out)
    n, _, h, w = raw.shape
    per_image = raw.device.type == "cpu" if merge_per_image is None else merge_per_image
    out = raw.new_empty(n, 3, h, w) if out is None else out
    batch = None if per_image else raw.new_empty(n, 12, h // 2, w // 2)
    for key in groups:
        members = [i for i, k in enumerate(keys) if k == key]
        index = to_device(torch.tensor(members), raw.device)
        rgb = F.conv2d(planes.index_select(0, index), _weights(key, raw))
        if batch is not None:
            batch.index_copy_(0, index, rgb)
            continue
        for j, i in enumerate(members):
            merge_phases(rgb[j : j + 1], out=out[i : i + 1])
    return out if batch is None else merge_phases(batch, out)


def denoise(image: torch.Tensor, sigma: Sequence[float], out: torch.Tensor | None = None) -> torch.Tensor:
    """Optional Gaussian denoise, one sigma (pixels, 0 = off) per image; ``(N, 3, H, W)`` -> same shape.

    Only the images with a positive sigma are filtered. Without ``out`` the result is a new tensor, or
    ``image`` itself when no image is filtered; with ``out`` (a contiguous ``(N, 3, H, W)`` tensor, may be
    ``image`` itself) it is ``out``.
    """
    on = [i for i, s in enumerate(sigma) if s > 0]
    if not on:
        return image if out is None or out is image else out.copy_(image)
    if len(on) == len(sigma):
        return gaussian_blur(image, sigma, out)
    index = to_device(torch.tensor(on), image.device)
    blurred = gaussian_blur(image.index_select(0, index), [sigma[i] for i in on])
    if out is None:
        return image.index_copy(0, index, blurred)
    if out is not image:
        out.copy_(image)
    return out.index_copy_(0, index, blurred)


def gamma_compression(
    linear: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Linear -> display-encoded: ``max(x, 1e-8) ** (1 / gamma)``; ``gamma`` ``(N, 1, 1, 1)``.

    The result goes into ``out`` when given (same shape as ``linear``, may be ``linear`` itself).
    """
    x = linear.clamp_min(1e-8) if out is None else torch.clamp_min(linear, 1e-8, out=out)
    return x.log_().div_(gamma).exp_()


def tone_curve(image: torch.Tensor, strength: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Global tone curve: ``(1 - s) x + s (3x^2 - 2x^3)``; ``s`` ``(N, 1, 1, 1)``; 1 = smoothstep.

    The result goes into ``out`` when given: a tensor of ``image``'s shape other than ``image``.
    """
    # 3 - 2x in one pass (rounded as x * -2 + 3 is: 2x is exact).
    three = image.new_tensor(3.0)
    smooth = torch.sub(three, image, alpha=2.0, out=torch.empty_like(image) if out is None else out)
    smooth.mul_(image).mul_(image).sub_(image)
    return smooth.mul_(strength).add_(image)


def unsharp_mask(
    image: torch.Tensor, amount: Sequence[float], sigma: Sequence[float], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Sharpen: ``x + amount * (x - blur_sigma(x))``, clipped to ``[0, 1]``; one amount and sigma per image.

    ``image`` ``(N, 3, H, W)`` sRGB; returns ``(N, 3, H, W)`` in ``[0, 1]`` (only clipped when no image is
    sharpened): a new tensor, or ``out`` when given (contiguous, may be ``image`` itself). Computed chunk by
    chunk of channels as they come out of the blur.
    """
    n, c, h, w = image.shape
    out = image.new_empty(n, c, h, w) if out is None else out
    if max(amount) <= 0:
        return torch.clamp(image, 0.0, 1.0, out=out)
    x = image.reshape(1, n * c, h, w)
    flat = out.view(1, n * c, h, w)
    gains = per_image(amount, image).reshape(n, 1).expand(n, c).reshape(1, n * c, 1, 1)
    for channels, detail in gaussian_blur_chunks(image, sigma):
        torch.sub(x[:, channels], detail, out=detail).mul_(gains[:, channels]).add_(x[:, channels])
        torch.clamp(detail, 0.0, 1.0, out=flat[:, channels])
    return out
