"""Bad input raises the package's errors, naming the offending value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.isp import ImageError, ISPError, ParamsError, simulate
from training.isp.errors import check_srgb_batch


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (torch.rand(3, 8, 8), "rank 3"),
        (torch.rand(1, 4, 8, 8), "3 channels .* got 4"),
        (torch.rand(1, 3, 8, 8, dtype=torch.float64), "float32, got torch.float64"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float32, got torch.uint8"),
        (torch.full((1, 3, 8, 8), 1.5), "max 1.5"),
        (torch.full((1, 3, 8, 8), -0.25), "min -0.25"),
        (torch.full((1, 3, 8, 8), float("nan")), r"\[0, 1\]"),
        (torch.zeros(0, 3, 8, 8), "non-empty"),
    ],
)
def test_bad_images_are_named(image: torch.Tensor, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        simulate(image, "ablation", seed=0)


def test_not_a_tensor() -> None:
    with pytest.raises(ImageError, match=r"torch\.Tensor, got ndarray"):
        check_srgb_batch(np.zeros((1, 3, 8, 8), dtype=np.float32))  # type: ignore[arg-type]


def test_too_small() -> None:
    with pytest.raises(ImageError, match="H=3 W=8"):
        simulate(torch.rand(1, 3, 3, 8), "ablation", seed=0)


def test_errors_are_value_errors() -> None:
    assert issubclass(ImageError, ISPError) and issubclass(ParamsError, ISPError)
    assert issubclass(ISPError, ValueError)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(
        ParamsError, match=r"'nope'.*'ablation', 'default-isp', 'lowlight', 'mild', 'still', 'train'"
    ):
        simulate(torch.rand(1, 3, 8, 8), "nope", seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of seed or generator"),
        ({"seed": 1, "generator": torch.Generator()}, "exactly one"),
        ({"seed": [1]}, "2 non-negative ints"),
        ({"seed": [1, -2]}, "non-negative"),
        ({"seed": 1.5}, "1.5"),
    ],
)
def test_bad_seeds(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        simulate(torch.rand(2, 3, 8, 8), "ablation", **kwargs)  # type: ignore[arg-type]


def test_params_count_must_match() -> None:
    params = simulate(torch.rand(1, 3, 8, 8), "ablation", seed=0).params
    with pytest.raises(ParamsError, match="2 images, got 1"):
        simulate(torch.rand(2, 3, 8, 8), params=params)
    with pytest.raises(ParamsError, match="not both"):
        simulate(torch.rand(1, 3, 8, 8), params=params, seed=1)
