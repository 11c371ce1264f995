"""Fixtures for the ISP tests: a real image from cset14 and small synthetic batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def load_image(path: Path) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 sRGB in [0, 1], cropped to even size."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
    h, w = x.shape[-2:]
    return x[..., : h // 2 * 2, : w // 2 * 2].contiguous()


@pytest.fixture(scope="session")
def lenna(dataset: Callable[[str], Path]) -> torch.Tensor:
    """cset14 ``lenna.png`` as ``(1, 3, 480, 500)`` float32 sRGB."""
    return load_image(dataset("cset14") / "lenna.png")


@pytest.fixture
def batch() -> torch.Tensor:
    """A smooth-ish random ``(4, 3, 32, 48)`` float32 sRGB batch in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(4, 3, 8, 12, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(32, 48), mode="bilinear", align_corners=False)
