"""The composer: shapes, determinism, reproduction from params, two views, devices."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import pytest
import torch

from training.isp import (
    PRESETS,
    SimResult,
    degrade,
    render_without_noise,
    simulate,
    simulate_two_views,
    stable_seed,
    without_noise,
)
from training.isp.errors import ParamsError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("device", DEVICES)
def test_output_contract(batch: torch.Tensor, preset: str, device: str) -> None:
    clean = batch.to(device)
    res = simulate(clean, preset, seed=3)
    assert isinstance(res, SimResult) and res.clean is clean
    assert res.degraded.shape == clean.shape and res.degraded.dtype == torch.float32
    assert res.degraded.device == clean.device
    assert float(res.degraded.min()) >= 0.0 and float(res.degraded.max()) <= 1.0
    assert len(res.params) == 4 and all(p.preset == preset for p in res.params)


@pytest.mark.parametrize(("h", "w"), [(33, 47), (5, 8), (4, 9)])
def test_odd_sizes_keep_their_shape(h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    res = simulate(x, "train", seed=0, keep_stages=True)
    assert res.degraded.shape == (2, 3, h, w)
    assert res.stages["RAW (noisy)"].shape == (2, 1, h + h % 2, w + w % 2)


def test_same_image_and_seed_are_bit_identical(batch: torch.Tensor) -> None:
    a = simulate(batch, "ablation", seed=7).degraded
    b = simulate(batch.clone(), "ablation", seed=7).degraded
    assert torch.equal(a, b)
    assert not torch.equal(a, simulate(batch, "ablation", seed=8).degraded)


def test_bit_identical_in_another_process() -> None:
    code = (
        "import hashlib, torch; from training.isp import simulate;"
        "x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0));"
        "print(hashlib.sha256(simulate(x, 'train', seed=11).degraded.numpy().tobytes()).hexdigest())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert hashlib.sha256(simulate(x, "train", seed=11).degraded.numpy().tobytes()).hexdigest() == there


def test_params_reproduce_the_output_and_images_are_batch_independent(batch: torch.Tensor) -> None:
    res = simulate(batch, "train", seed=[stable_seed("t", i) for i in range(4)])
    assert torch.equal(simulate(batch, params=res.params).degraded, res.degraded)
    alone = simulate(batch[2:3], "train", seed=[stable_seed("t", 2)])
    assert torch.equal(alone.degraded[0], res.degraded[2])


def test_generator_draws_differ_between_calls(batch: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = simulate(batch, "train", generator=g), simulate(batch, "train", generator=g)
    assert a.params != b.params and not torch.equal(a.degraded, b.degraded)


def test_jpeg_switch(batch: torch.Tensor) -> None:
    with_jpeg = simulate(batch, "ablation", seed=1)
    without = simulate(batch, "ablation", seed=1, jpeg=False)
    assert all(p.jpeg_quality is not None for p in with_jpeg.params)
    assert all(p.jpeg_quality is None for p in without.params)
    assert not torch.equal(with_jpeg.degraded, without.degraded)
    assert torch.equal(simulate(batch, params=without.params).degraded, without.degraded)


def test_two_views_differ_but_share_the_clean_image(batch: torch.Tensor) -> None:
    v1, v2 = simulate_two_views(batch, "train", generator=torch.Generator().manual_seed(4))
    assert v1.clean is batch and v2.clean is batch
    assert all(p1 != p2 for p1, p2 in zip(v1.params, v2.params, strict=True))
    assert float((v1.degraded - v2.degraded).abs().mean()) > 0.01
    again = simulate_two_views(batch, "train", seed=9)
    assert torch.equal(again[1].degraded, simulate_two_views(batch, "train", seed=9)[1].degraded)


def test_one_preset_per_image_equals_each_image_simulated_with_its_own(batch: torch.Tensor) -> None:
    names = ["ablation", "train", "lowlight", "ablation"]
    seeds = [stable_seed("mix", i) for i in range(4)]
    mixed = simulate(batch, names, seed=seeds)
    for i, name in enumerate(names):
        alone = simulate(batch[i : i + 1], name, seed=[seeds[i]])
        assert torch.equal(alone.degraded[0], mixed.degraded[i])
    v1, v2 = simulate_two_views(batch, names, seed=3)
    sigmas = [p.gaussian_sigma for p in v2.params]
    assert 0.05 <= sigmas[0] <= 0.1 and 0.15 <= sigmas[2] <= 0.35 and 0.05 <= sigmas[3] <= 0.1
    assert torch.equal(v1.degraded, simulate_two_views(batch, names, seed=3)[0].degraded)


def test_a_preset_list_of_the_wrong_length_or_with_an_unknown_name_is_refused(batch: torch.Tensor) -> None:
    with pytest.raises(ParamsError, match="one preset name per image: 4 images, got 2"):
        simulate(batch, ["train", "ablation"], seed=1)
    with pytest.raises(ParamsError, match="unknown ISP preset 'nope'"):
        simulate_two_views(batch, ["train", "nope", "train", "train"], seed=1)


@pytest.mark.parametrize("domain", ["raw", "srgb"])
def test_noise_domain_decides_where_the_protocol_noise_goes(domain: str) -> None:
    """sRGB noise reaches the output at its own sigma; RAW noise is amplified by gains and gamma."""
    grey = torch.full((1, 3, 128, 128), 0.5)
    exact = simulate(grey, "ablation", seed=3, jpeg=False).params[0].exact()
    noisy = dataclasses.replace(exact, gaussian_sigma=0.05, noise_domain=domain)
    residual = simulate(grey, params=[noisy]).degraded - simulate(grey, params=[exact]).degraded
    if domain == "srgb":
        assert float(residual.std()) == pytest.approx(0.05, rel=0.05)
    else:
        assert float(residual.std()) > 0.1


def _two_clean(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 32, 36, generator=torch.Generator().manual_seed(seed))


def test_the_rendering_is_the_same_camera_without_noise_or_jpeg() -> None:
    result = simulate(_two_clean(), "ablation", seed=[5, 6])
    rendered = render_without_noise(result)
    assert rendered.shape == result.degraded.shape and rendered.dtype == torch.float32
    quiet = [without_noise(p) for p in result.params]
    assert all(
        q.gaussian_sigma == q.shot_noise == q.read_noise == 0 and q.jpeg_quality is None for q in quiet
    )
    assert all(
        q.gamma == p.gamma and q.cam2rgb == p.cam2rgb for q, p in zip(quiet, result.params, strict=True)
    )
    assert torch.equal(rendered, degrade(result.clean, quiet, jpeg=False).degraded)
    # Noise and JPEG (sigma >= 0.05, quality <= 30) are what separates the degraded image from it.
    assert float((result.degraded - rendered).square().mean()) > 0.05**2 / 2
    assert torch.equal(rendered, render_without_noise(simulate(_two_clean(), "ablation", seed=[5, 6])))
