"""Draw per-image :class:`ISPParams` from a :class:`Preset`, reproducibly from integer seeds.

Each image gets its own integer seed; everything about its degradation (including the seed of its noise)
is drawn from a NumPy generator seeded with it, so an image's degradation does not depend on the rest of
its batch and the drawn parameters are the same on every device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from training.isp.colour import DEFAULT_RGB2CAM, random_rgb2cam
from training.isp.errors import ParamsError
from training.isp.params import ISPParams, as_matrix3
from training.isp.presets import Draw, Preset

#: Forward settings of the untuned default ISP: Brooks' mean digital gain and mid-range white balance.
DEFAULT_DIGITAL_GAIN = 1.0 / 0.8
DEFAULT_WB_RED_GAIN = 2.15
DEFAULT_WB_BLUE_GAIN = 1.7

_SEED_LIMIT = 2**63


def stable_seed(*parts: str | int) -> int:
    """A seed in ``[0, 2**63)`` from the sha256 of the parts, identical in every process and platform.

    Example: ``stable_seed("ablation", "cset14", "baboon.png")`` fixes one evaluation image's degradation.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % _SEED_LIMIT


def image_seeds(
    n: int, seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None
) -> list[int]:
    """``n`` per-image seeds from exactly one of: an int seed, a sequence of ``n`` seeds, a torch generator.

    An int seed ``s`` gives ``stable_seed(s, i)`` for image ``i`` (so a prefix of a batch is degraded the
    same whatever the batch size); a generator is advanced by one draw per call.
    """
    if (seed is None) == (generator is None):
        raise ParamsError(
            f"pass exactly one of seed or generator (got seed={seed!r}, generator={generator!r})"
        )
    if generator is not None:
        base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        return [stable_seed(base, i) for i in range(n)]
    if isinstance(seed, bool) or not isinstance(seed, int | Sequence):
        raise ParamsError(f"seed must be an int or a sequence of ints, got {seed!r}")
    if isinstance(seed, int):
        return [stable_seed(seed, i) for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ParamsError(f"seed sequence must hold {n} non-negative ints (one per image), got {seeds!r}")
    return seeds


def _draw(rng: np.random.Generator, d: Draw, off: float) -> float:
    """One value of ``d``, or ``off`` when the stage is switched off; always consumes two draws."""
    on = rng.random() < d.prob
    if d.log:
        v = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
    else:
        v = float(rng.uniform(d.low, d.high))
    return v if on else off


def sample_noise_levels(rng: np.random.Generator) -> tuple[float, float]:
    """Brooks' heteroscedastic noise: ``log(shot) ~ U(log 1e-4, log 0.012)``,
    ``log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26)``. Returns ``(shot, read)`` (read is a variance)."""
    log_shot = rng.uniform(np.log(1e-4), np.log(0.012))
    log_read = 2.18 * log_shot + 1.20 + rng.normal(0.0, 0.26)
    return float(np.exp(log_shot)), float(np.exp(log_read))


def _sample_camera(rng: np.random.Generator, preset: Preset) -> dict[str, Any]:
    """Camera and scene (inverse ISP), as in Brooks et al.: CFA, random colour matrix and gains."""
    cfa = preset.cfa_patterns[int(rng.integers(len(preset.cfa_patterns)))]
    rgb2cam = random_rgb2cam(rng)
    rgb_gain = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.5, 1.1))
    red_gain = float(rng.uniform(1.9, 2.4))
    blue_gain = float(rng.uniform(1.5, 1.9))
    return {
        "cfa": cfa,
        "rgb2cam": rgb2cam,
        "rgb_gain": rgb_gain,
        "red_gain": red_gain,
        "blue_gain": blue_gain,
    }


def _sample_noise(rng: np.random.Generator, preset: Preset) -> dict[str, Any]:
    """Noise in RAW (sensor) and the protocol's Gaussian and Poisson noise, and the seed of their draws."""
    shot, read = sample_noise_levels(rng)
    if rng.random() >= preset.sensor_noise:
        shot, read = 0.0, 0.0
    return {
        "shot_noise": shot,
        "read_noise": read,
        "gaussian_sigma": _draw(rng, preset.gaussian_sigma, 0.0),
        "poisson_lambda": _draw(rng, preset.poisson_lambda, 0.0),
        "noise_seed": int(rng.integers(0, _SEED_LIMIT)),
    }


def _sample_forward(rng: np.random.Generator, preset: Preset, camera: dict[str, Any]) -> dict[str, Any]:
    """Forward ISP: the true settings of ``camera`` with errors, or the untuned defaults; then the noise
    domain and the neutral-ISP switch, drawn last so the draws before them do not depend on them."""
    ev = _draw(rng, preset.exposure_ev, 0.0)
    wb_red_err = _draw(rng, preset.wb_error, 1.0)
    wb_blue_err = _draw(rng, preset.wb_error, 1.0)
    mix = np.eye(3) + rng.uniform(-preset.ccm_perturbation, preset.ccm_perturbation, size=(3, 3))
    mix = mix / mix.sum(axis=1, keepdims=True)
    rgb2cam, rgb_gain = camera["rgb2cam"], camera["rgb_gain"]
    red_gain, blue_gain = camera["red_gain"], camera["blue_gain"]
    if preset.default_forward:
        digital_gain, wb_red, wb_blue = DEFAULT_DIGITAL_GAIN, DEFAULT_WB_RED_GAIN, DEFAULT_WB_BLUE_GAIN
        cam2rgb = np.linalg.inv(DEFAULT_RGB2CAM)
    else:
        digital_gain, wb_red, wb_blue = rgb_gain * 2.0**ev, red_gain * wb_red_err, blue_gain * wb_blue_err
        cam2rgb = mix @ np.linalg.inv(rgb2cam)
    demosaic = preset.demosaic[int(rng.integers(len(preset.demosaic)))]
    denoise_sigma = _draw(rng, preset.denoise_sigma, 0.0)
    gamma = _draw(rng, preset.gamma, 2.2)
    tone_strength = _draw(rng, preset.tone_strength, 1.0)
    sharpen_amount = _draw(rng, preset.sharpen_amount, 0.0)
    sharpen_sigma = _draw(rng, preset.sharpen_sigma, 1.0)
    quality = _draw(rng, preset.jpeg_quality, 0.0)
    noise_domain = "srgb" if rng.random() < preset.srgb_noise else "raw"
    if rng.random() < preset.neutral_isp and not preset.default_forward:
        digital_gain, wb_red, wb_blue = rgb_gain, red_gain, blue_gain
        cam2rgb = np.linalg.inv(rgb2cam)
        denoise_sigma, gamma, tone_strength, sharpen_amount = 0.0, 2.2, 1.0, 0.0
    return {
        "digital_gain": digital_gain,
        "wb_red_gain": wb_red,
        "wb_blue_gain": wb_blue,
        "cam2rgb": as_matrix3(cam2rgb),
        "demosaic": demosaic,
        "denoise_sigma": denoise_sigma,
        "gamma": gamma,
        "tone_strength": tone_strength,
        "sharpen_amount": sharpen_amount,
        "sharpen_sigma": sharpen_sigma,
        "jpeg_quality": round(quality) if quality > 0 else None,
        "noise_domain": noise_domain,
    }


def sample_params(preset: Preset, seed: int) -> ISPParams:
    """Draw one image's parameters from ``preset`` with a NumPy generator seeded by ``seed``: the camera,
    then the noise, then the forward ISP, in that order (the order fixes every draw)."""
    rng = np.random.default_rng(seed)
    camera = _sample_camera(rng, preset)
    noise = _sample_noise(rng, preset)
    forward = _sample_forward(rng, preset, camera)
    return ISPParams(
        **{**camera, "rgb2cam": as_matrix3(camera["rgb2cam"])}, **noise, **forward, preset=preset.name
    )
