"""JPEG stage: error grows as quality drops; None leaves images untouched."""

from __future__ import annotations

import torch

from training.isp.jpeg import jpeg_compress


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
