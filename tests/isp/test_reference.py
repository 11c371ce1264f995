"""The per-image NumPy reference agrees with the batched torch path (noise off)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.isp import PRESETS, get_preset, sample_params
from training.isp.pipeline import degrade
from training.isp.reference import degrade_image


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reference_matches_torch_without_noise(batch: torch.Tensor, preset: str) -> None:
    params = [
        dataclasses.replace(
            sample_params(get_preset(preset), seed),
            shot_noise=0.0,
            read_noise=0.0,
            gaussian_sigma=0.0,
            poisson_lambda=0.0,
        )
        for seed in range(4)
    ]
    batched = degrade(batch, params, jpeg=False).degraded.permute(0, 2, 3, 1).numpy()
    for i, p in enumerate(params):
        ref = degrade_image(batch[i].permute(1, 2, 0).numpy(), p, jpeg=False)
        assert ref.dtype == np.float32 and ref.shape == batched[i].shape
        assert np.abs(ref - batched[i]).max() < 1e-4


def test_reference_noise_has_the_same_statistics(batch: torch.Tensor) -> None:
    p = sample_params(get_preset("ablation"), 0)
    flat = torch.full((1, 3, 64, 64), 0.5)
    quiet = dataclasses.replace(p, gaussian_sigma=0.0)
    ref = degrade_image(flat[0].permute(1, 2, 0).numpy(), p, jpeg=False)
    ours = degrade(flat, [p], jpeg=False).degraded[0].permute(1, 2, 0).numpy()
    clean = degrade(flat, [quiet], jpeg=False).degraded[0].permute(1, 2, 0).numpy()
    assert np.std(ref - clean) == pytest.approx(np.std(ours - clean), rel=0.1)
