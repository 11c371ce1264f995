"""16-bit PNG input: greyscale keeps its precision, colour is decoded to 8 bits per channel (SERVICE.md)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from service.imaging import decode_image
from service.settings import Settings
from tests.service.conftest import serve
from tests.service.test_api import png16_rgb


def samples(shape: tuple[int, ...]) -> np.ndarray:
    """uint16 samples whose low bytes differ from their high bytes (so a decode to 8 bits is visible)."""
    rng = np.random.default_rng(16)
    return rng.integers(0, 65536, shape, dtype=np.uint16)


def test_colour_16bit_png_is_decoded_to_its_high_bytes() -> None:
    pixels = samples((12, 20, 3))
    decoded = decode_image(png16_rgb(pixels), max_pixels=10**6)
    assert decoded.bit_depth == 8 and decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, (pixels >> 8).astype(np.uint8))


def test_greyscale_16bit_png_keeps_every_sample() -> None:
    grey = samples((12, 20))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=10**6)
    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(np.rint(decoded.pixels[..., channel] * 65535).astype(np.uint16), grey)


async def test_colour_16bit_png_is_served_as_its_8bit_version(make_settings: Callable[..., Settings]) -> None:
    pixels = samples((40, 48, 3))
    eight = io.BytesIO()
    Image.fromarray((pixels >> 8).astype(np.uint8), mode="RGB").save(eight, format="PNG")
    async with serve(make_settings()) as client:
        from16 = await client.post("/v1/restore", content=png16_rgb(pixels))
        from8 = await client.post("/v1/restore", content=eight.getvalue())
    assert from16.status_code == from8.status_code == 200, from16.text
    assert from16.content == from8.content
