"""NIQE with a small pristine model: noise and blur score worse than the clean image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.data import load_rgb_batch
from training.evaluate.errors import DatasetMissingError
from training.evaluate.niqe import PristineModel, fit_pristine, niqe


@pytest.fixture(scope="module")
def pristine(dataset: Callable[[str], Path]) -> PristineModel:
    """A pristine model fitted on 12 bsds500_train images (the default uses 120)."""
    return fit_pristine(dataset("bsds500_train"), max_images=12)


def test_niqe_prefers_the_clean_image(dataset: Callable[[str], Path], pristine: PristineModel) -> None:
    clean = load_rgb_batch(dataset("bsd100") / "img_001_SRF_4_HR.png")
    g = torch.Generator().manual_seed(0)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    blurred = F.avg_pool2d(clean, 5, 1, 2, count_include_pad=False)
    score = niqe(clean, pristine)
    assert score < niqe(noisy, pristine)
    assert score < niqe(blurred, pristine)
    assert niqe(clean, pristine) == score


def test_niqe_refuses_tiny_images(pristine: PristineModel) -> None:
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe(torch.zeros(1, 3, 64, 200), pristine)


def test_pristine_folder_without_images_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=str(tmp_path)):
        fit_pristine(tmp_path)
