"""Decoding request images and encoding results.

Decoded pixels are ``(H, W, 3)`` sRGB, EXIF orientation applied: uint8 (0..255) for 8-bit sources and for
16-bit colour ones (Pillow keeps the high byte of each sample), float32 in [0, 1] for 16-bit greyscale ones
(uint8 keeps tiles, queues and Redis payloads 4x smaller). The pixel-count limit and the caller's admission
check (cost, shape) run on the header, before any pixel is decoded (decompression bombs, thin or costly
images).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadInput, TooLarge, UnsupportedMedia

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
OUTPUT_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded request image: ``pixels`` (H, W, 3) sRGB, uint8 when ``bit_depth`` is 8, float32 in [0, 1]
    when it is 16 (16-bit greyscale sources only)."""

    pixels: np.ndarray
    source_format: str
    bit_depth: int

    @property
    def height(self) -> int:
        """Rows (after EXIF orientation)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns (after EXIF orientation)."""
        return int(self.pixels.shape[1])

    def as_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8 sRGB."""
        return self.pixels if self.pixels.dtype == np.uint8 else to_uint8(self.pixels)


def decode_image(
    data: bytes, max_pixels: int, admit: Callable[[int, int], object] | None = None
) -> DecodedImage:
    """Decode PNG (8/16-bit), JPEG or WebP bytes to ``(H, W, 3)`` sRGB: uint8, or float32 [0, 1] for 16-bit
    greyscale (16-bit colour is decoded to uint8).

    Raises ``UnsupportedMedia`` (not an image / other format), ``TooLarge`` (width*height > ``max_pixels``,
    checked from the header) and ``BadInput`` (truncated or corrupt pixel data). ``admit(width, height)``
    runs on the header's size (before EXIF orientation) once it is within ``max_pixels`` and before any
    pixel is decoded; whatever it raises propagates (see :mod:`service.admission`).
    """
    if not data:
        raise BadInput("empty body: send the image bytes or a multipart field 'file'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise UnsupportedMedia(
                f"body ({len(data)} bytes, starts {data[:8]!r}) is not a PNG, JPEG or WebP image"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadInput(
                f"body ({len(data)} bytes) looks like an image but its header is corrupt: {exc}"
            ) from exc
        except Image.DecompressionBombError as exc:
            raise TooLarge(
                f"image header claims a decompression bomb ({exc}); the limit is {max_pixels} pixels"
            ) from exc
        fmt = ACCEPTED_FORMATS.get(image.format or "")
        if fmt is None:
            raise UnsupportedMedia(f"image format {image.format} is not supported (PNG, JPEG, WebP)")
        width, height = image.size
        if width * height > max_pixels:
            raise TooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
        if admit is not None:
            admit(width, height)
        try:
            image.load()
            pixels, depth = _to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise BadInput(
                f"{fmt} image {width}x{height} cannot be decoded (truncated or corrupt): {exc}"
            ) from exc
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise BadInput(f"image has an empty dimension: {width}x{height}")
    return DecodedImage(pixels, fmt, depth)


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, int]:
    """Any PIL mode -> ((H, W, 3) uint8, 8), or for 16-bit greyscale ((H, W, 3) float32 [0, 1], 16)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2), 16
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8), 8


def to_uint8(pixels: np.ndarray, rows: int = 256) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] -> uint8 (rounded, clipped), converted ``rows`` rows at a time so a
    camera-sized image needs no float temporaries of its full size."""
    out = np.empty(pixels.shape, dtype=np.uint8)
    for top in range(0, pixels.shape[0], rows):
        band = pixels[top : top + rows]
        out[top : top + rows] = (np.clip(band, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """Encode ``(H, W, 3)`` float sRGB in [0, 1] as 8-bit PNG or JPEG (``quality`` 1..100)."""
    image = Image.fromarray(to_uint8(pixels), mode="RGB")
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
