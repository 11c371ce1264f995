"""JPEG compression, the one stage that leaves the device: per image on the CPU with Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(srgb: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float sRGB in ``[0, 1]`` -> ``(H, W, 3)`` uint8, rounding to nearest."""
    return (srgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def jpeg_roundtrip_uint8(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode ``(H, W, 3)`` uint8 as a baseline JPEG (4:2:0 chroma) at ``quality`` and decode it again."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


def jpeg_compress(srgb: torch.Tensor, quality: Sequence[int | None]) -> torch.Tensor:
    """JPEG-compress each image at its quality (``None`` = leave as is); ``(N, 3, H, W)`` float sRGB.

    Compressed images come back quantised to 8 bits; the result is float32 in ``[0, 1]`` on the input device.
    """
    if all(q is None for q in quality):
        return srgb
    out = srgb.clone()
    for i, q in enumerate(quality):
        if q is not None:
            decoded = jpeg_roundtrip_uint8(to_uint8(srgb[i]), q)
            out[i] = torch.from_numpy(decoded).permute(2, 0, 1).to(srgb.device, torch.float32) / 255.0
    return out
