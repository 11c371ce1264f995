"""Synthetic camera ISP simulator: inverse ISP, RAW noise and a randomised forward ISP on batched tensors.

Public API::

    res = simulate(clean, preset="ablation", seed=7)  # clean: (N, 3, H, W) float32 sRGB in [0, 1]
    res.degraded, res.params                          # same shape/device; one ISPParams per image
    v1, v2 = simulate_two_views(clean, preset="train", generator=g)
"""

from training.isp.errors import ImageError, ISPError, ParamsError
from training.isp.params import CFA_PATTERNS, DEMOSAIC_METHODS, ISPParams
from training.isp.pipeline import (
    SimResult,
    add_noise,
    degrade,
    process,
    render_without_noise,
    simulate,
    simulate_two_views,
    unprocess,
    without_noise,
)
from training.isp.presets import PRESETS, Draw, Preset, get_preset
from training.isp.sampler import sample_params, stable_seed

__all__ = [
    "CFA_PATTERNS",
    "DEMOSAIC_METHODS",
    "PRESETS",
    "Draw",
    "ISPError",
    "ISPParams",
    "ImageError",
    "ParamsError",
    "Preset",
    "SimResult",
    "add_noise",
    "degrade",
    "get_preset",
    "process",
    "render_without_noise",
    "sample_params",
    "simulate",
    "simulate_two_views",
    "stable_seed",
    "unprocess",
    "without_noise",
]
