"""JPEG stage: error grows as quality drops; None leaves images untouched; batch conversions are exact."""

from __future__ import annotations

import numpy as np
import torch

from training.isp.jpeg import jpeg_compress, jpeg_roundtrip_uint8, to_uint8


def test_jpeg_error_grows_as_quality_drops(lenna: torch.Tensor) -> None:
    x = lenna[..., :256, :256]
    errors = [float(((jpeg_compress(x, [q]) - x) ** 2).mean()) for q in (95, 75, 50, 30, 10)]
    assert errors == sorted(errors) and errors[-1] > 4 * errors[0]


def test_none_quality_is_identity_and_mixed_batches() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert jpeg_compress(x, [None, None]) is x
    out = jpeg_compress(x, [None, 50])
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])
    assert out.dtype == torch.float32 and torch.equal(out[1], (out[1] * 255).round() / 255)


def test_batch_conversion_and_threads_match_image_by_image() -> None:
    x = torch.rand(4, 3, 24, 20, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    rgb = to_uint8(x)
    assert rgb.shape == (4, 24, 20, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    for i in range(4):
        single = (x[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(to_uint8(x[i]), single) and np.array_equal(rgb[i], single)
    quality = [30, None, 10, 75]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = jpeg_compress(x, quality)
        torch.set_num_threads(2)
        two = jpeg_compress(x, quality)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and one.is_contiguous()
    for i, q in enumerate(quality):
        expected = (
            x[i] if q is None else torch.from_numpy(jpeg_roundtrip_uint8(rgb[i], q)).permute(2, 0, 1) / 255.0
        )
        assert torch.equal(one[i], expected)
