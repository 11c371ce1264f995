"""ISPParams: JSON round trip, validation and the exact (neutral) copy."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from training.isp import ISPParams, ParamsError, get_preset, sample_params


@pytest.fixture
def params() -> ISPParams:
    return sample_params(get_preset("train"), 11)


def test_json_round_trip_is_exact(params: ISPParams) -> None:
    assert ISPParams.from_json(params.to_json()) == params
    assert json.loads(params.to_json())["cfa"] == params.cfa


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("cfa", "RGBG", "RGBG"),
        ("demosaic", "ahd", "ahd"),
        ("gamma", 0.0, "gamma .* got 0.0"),
        ("gaussian_sigma", -0.1, "gaussian_sigma .* got -0.1"),
        ("jpeg_quality", 0, "jpeg_quality .* got 0"),
        ("jpeg_quality", 50.5, "50.5"),
        ("noise_seed", -1, "noise_seed"),
        ("noise_domain", "linear", "noise_domain .* got 'linear'"),
        ("rgb2cam", [[1.0, 0.0], [0.0, 1.0]], r"shape \(2, 2\)"),
        ("wb_red_gain", float("inf"), "wb_red_gain"),
    ],
)
def test_invalid_fields_are_named(params: ISPParams, field: str, value: Any, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        dataclasses.replace(params, **{field: value})


def test_from_json_rejects_bad_documents(params: ISPParams) -> None:
    with pytest.raises(ParamsError, match="not valid JSON"):
        ISPParams.from_json("{")
    with pytest.raises(ParamsError, match="must be an object"):
        ISPParams.from_json("[1]")
    d = params.to_dict()
    d["extra"] = 1
    del d["gamma"]
    with pytest.raises(ParamsError, match=r"unknown keys \['extra'\], missing keys \['gamma'\]"):
        ISPParams.from_dict(d)


def test_exact_undoes_the_inverse_isp(params: ISPParams) -> None:
    e = params.exact()
    assert (e.digital_gain, e.wb_red_gain, e.wb_blue_gain) == (
        params.rgb_gain,
        params.red_gain,
        params.blue_gain,
    )
    assert np.allclose(np.asarray(e.cam2rgb) @ np.asarray(e.rgb2cam), np.eye(3), atol=1e-12)
    assert e.gaussian_sigma == e.poisson_lambda == e.shot_noise == e.read_noise == 0.0
    assert e.jpeg_quality is None and e.gamma == 2.2 and e.tone_strength == 1.0


def test_records_without_noise_domain_read_as_raw(params: ISPParams) -> None:
    d = params.to_dict()
    del d["noise_domain"]
    assert ISPParams.from_dict(d).noise_domain == "raw"
