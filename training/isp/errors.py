"""The ISP simulator's one exception hierarchy, and the input checks that raise it."""

from __future__ import annotations

import torch

from training.errors import DiRError


class ISPError(DiRError, ValueError):
    """Base class of every error the simulator raises on bad input or configuration."""


class ImageError(ISPError):
    """An image tensor has the wrong rank, shape, dtype or value range."""


class ParamsError(ISPError):
    """An ISP parameter record, preset name or seed is invalid."""


def check_srgb_batch(image: torch.Tensor, name: str = "clean") -> None:
    """Check ``image`` is an ``(N, 3, H, W)`` float32 sRGB batch in ``[0, 1]`` with ``N, H, W >= 1``.

    Raises:
        ImageError: naming the offending type, rank, shape, dtype or value range.
    """
    if not isinstance(image, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4:
        raise ImageError(
            f"{name} must have rank 4 (N, 3, H, W), got rank {image.dim()} shape {tuple(image.shape)}"
        )
    n, c, h, w = image.shape
    if c != 3:
        raise ImageError(f"{name} must have 3 channels (sRGB) in dim 1, got {c} (shape {tuple(image.shape)})")
    if n < 1 or h < 1 or w < 1:
        raise ImageError(f"{name} must be non-empty, got shape {tuple(image.shape)}")
    if image.dtype != torch.float32:
        raise ImageError(f"{name} must be float32, got {image.dtype}")
    lo, hi = torch.aminmax(image)
    lo_v, hi_v = float(lo), float(hi)
    if not (lo_v >= 0.0 and hi_v <= 1.0):
        raise ImageError(f"{name} values must lie in [0, 1] (finite), got min {lo_v:.4g} max {hi_v:.4g}")
