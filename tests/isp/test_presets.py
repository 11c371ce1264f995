"""Presets draw inside their documented ranges (property tests over seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.isp import PRESETS, Draw, ISPParams, ParamsError, Preset, get_preset, sample_params
from training.isp.sampler import DEFAULT_DIGITAL_GAIN, DEFAULT_WB_BLUE_GAIN, DEFAULT_WB_RED_GAIN

seeds = st.integers(min_value=0, max_value=2**63 - 1)
TOL = 1e-9


def inside(value: float, d: Draw, off: float) -> bool:
    """``value`` is a draw of ``d`` or (when the stage can be off) its off value."""
    return (d.low - TOL <= value <= d.high + TOL and d.prob > 0) or (value == off and d.prob < 1)


def check_ranges(preset: Preset, p: ISPParams) -> None:
    assert p.preset == preset.name
    assert p.cfa in preset.cfa_patterns and p.demosaic in preset.demosaic
    assert np.allclose(np.sum(p.rgb2cam, axis=1), 1.0)
    assert 1.9 <= p.red_gain <= 2.4 and 1.5 <= p.blue_gain <= 1.9 and 1 / 1.1 <= p.rgb_gain <= 2.0
    if p.shot_noise == 0.0:
        assert p.read_noise == 0.0 and preset.sensor_noise < 1
    else:
        assert 1e-4 - TOL <= p.shot_noise <= 0.012 + TOL and p.read_noise > 0 and preset.sensor_noise > 0
    assert inside(p.gaussian_sigma, preset.gaussian_sigma, 0.0)
    assert inside(p.poisson_lambda, preset.poisson_lambda, 0.0)
    assert inside(p.denoise_sigma, preset.denoise_sigma, 0.0)
    assert inside(p.gamma, preset.gamma, 2.2)
    assert inside(p.tone_strength, preset.tone_strength, 1.0)
    assert inside(p.sharpen_amount, preset.sharpen_amount, 0.0)
    assert inside(p.sharpen_sigma, preset.sharpen_sigma, 1.0)
    q = preset.jpeg_quality
    assert (p.jpeg_quality is None and q.prob < 1) or (
        p.jpeg_quality is not None and round(q.low) <= p.jpeg_quality <= round(q.high)
    )
    assert np.allclose(np.sum(p.cam2rgb, axis=1), 1.0)
    if preset.default_forward:
        assert (p.digital_gain, p.wb_red_gain, p.wb_blue_gain) == (
            DEFAULT_DIGITAL_GAIN,
            DEFAULT_WB_RED_GAIN,
            DEFAULT_WB_BLUE_GAIN,
        )
    else:
        assert inside(math.log2(p.digital_gain / p.rgb_gain), preset.exposure_ev, 0.0)
        assert inside(p.wb_red_gain / p.red_gain, preset.wb_error, 1.0)
        assert inside(p.wb_blue_gain / p.blue_gain, preset.wb_error, 1.0)
        ideal = np.linalg.inv(np.asarray(p.rgb2cam))
        mix = np.asarray(p.cam2rgb) @ np.linalg.inv(ideal)
        assert (
            np.abs(mix - np.eye(3)).max()
            <= 3 * preset.ccm_perturbation / (1 - 3 * preset.ccm_perturbation) + 1e-12
        )


@pytest.mark.parametrize("name", sorted(PRESETS))
@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_presets_draw_inside_their_ranges(name: str, seed: int) -> None:
    check_ranges(get_preset(name), sample_params(get_preset(name), seed))


def test_paper_ranges() -> None:
    ablation, lowlight = get_preset("ablation"), get_preset("lowlight")
    assert (ablation.gaussian_sigma.low, ablation.gaussian_sigma.high) == (0.05, 0.1)
    assert (ablation.jpeg_quality.low, ablation.jpeg_quality.high, ablation.jpeg_quality.prob) == (
        10,
        30,
        1.0,
    )
    assert (lowlight.gaussian_sigma.low, lowlight.gaussian_sigma.high) == (0.15, 0.35)
    assert (lowlight.poisson_lambda.low, lowlight.poisson_lambda.high) == (0.02, 0.04)


@pytest.mark.parametrize(
    "field", ["gaussian_sigma", "poisson_lambda", "jpeg_quality", "gamma", "tone_strength"]
)
@pytest.mark.parametrize("evaluation", ["ablation", "lowlight", "default-isp"])
def test_train_covers_the_evaluation_presets(field: str, evaluation: str) -> None:
    train, ev = getattr(get_preset("train"), field), getattr(get_preset(evaluation), field)
    if ev.prob > 0:
        assert train.low <= ev.low and ev.high <= train.high
    if ev.prob < 1:
        assert train.prob < 1


def test_invalid_draw_and_preset() -> None:
    with pytest.raises(ParamsError, match="low=2"):
        Draw(2.0, 1.0)
    with pytest.raises(ParamsError, match="XGGB"):
        Preset(name="bad", description="", cfa_patterns=("XGGB",))


@pytest.mark.parametrize("name", ["ablation", "lowlight"])
@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_protocol_noise_is_in_srgb(name: str, seed: int) -> None:
    assert sample_params(get_preset(name), seed).noise_domain == "srgb"


def test_train_mixes_noise_domains_and_neutral_renderings() -> None:
    train = get_preset("train")
    draws = [sample_params(train, seed) for seed in range(600)]
    srgb = sum(p.noise_domain == "srgb" for p in draws) / len(draws)
    neutral = [
        p
        for p in draws
        if (p.digital_gain, p.wb_red_gain, p.wb_blue_gain) == (p.rgb_gain, p.red_gain, p.blue_gain)
    ]
    assert srgb == pytest.approx(train.srgb_noise, abs=0.06)
    assert len(neutral) / len(draws) == pytest.approx(train.neutral_isp, abs=0.06)
    for p in neutral:
        assert np.allclose(p.exact().cam2rgb, p.cam2rgb) and (p.gamma, p.tone_strength) == (2.2, 1.0)
        assert p.sharpen_amount == 0.0 and p.denoise_sigma == 0.0


def test_probabilities_are_checked() -> None:
    with pytest.raises(ParamsError, match=r"srgb_noise=1\.5"):
        Preset(name="bad", description="", srgb_noise=1.5)
