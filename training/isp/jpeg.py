"""JPEG compression, the one stage that leaves the device: per image on the CPU with Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from training.isp.ops import for_each_image, to_device


def to_uint8(srgb: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` float sRGB in ``[0, 1]`` -> contiguous ``(..., H, W, 3)`` uint8, rounded to nearest.

    Clipping after scaling is the same as before it (``255 x`` is monotonic and exact at 0 and 1).
    """
    levels = (srgb * 255.0).clamp_(0.0, 255.0).round_().movedim(-3, -1)
    return torch.empty(levels.shape, dtype=torch.uint8).copy_(levels).numpy()


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
    The conversions to and from 8 bits run once for the batch; Pillow encodes and decodes image by image,
    on up to ``torch.get_num_threads()`` threads (Pillow releases the GIL; each image's result is the same
    whatever the thread count).
    """
    on = [(i, q) for i, q in enumerate(quality) if q is not None]
    if not on:
        return srgb
    n, c, h, w = srgb.shape
    index = to_device(torch.tensor([i for i, _ in on]), srgb.device)
    rgb = to_uint8(srgb if len(on) == n else srgb.index_select(0, index))
    decoded = np.empty_like(rgb)

    def roundtrip(k: int) -> None:
        decoded[k] = jpeg_roundtrip_uint8(rgb[k], on[k][1])

    for_each_image(roundtrip, len(on))
    images = torch.empty(len(on), c, h, w, dtype=torch.float32, device=srgb.device)
    torch.div(torch.from_numpy(decoded).to(srgb.device).permute(0, 3, 1, 2), 255.0, out=images)
    return images if len(on) == n else srgb.index_copy(0, index, images)
