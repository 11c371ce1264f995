"""RAW and sRGB noise match their models on flat patches."""

from __future__ import annotations

import pytest
import torch

from training.isp.noise import add_raw_noise, add_srgb_noise, noise_generators

SIDE = 256  # 65536 samples per patch: the variance estimate's relative standard error is about 0.6%


def noisy_flat(
    level: float, shot: float, read: float, sigma: float, lam: float, seed: int = 0
) -> torch.Tensor:
    raw = torch.full((1, 1, SIDE, SIDE), level)
    return add_raw_noise(
        raw,
        shot=[shot],
        read=[read],
        gaussian_sigma=[sigma],
        poisson_lambda=[lam],
        generators=noise_generators([seed], raw.device),
    )


@pytest.mark.parametrize(
    ("level", "shot", "read", "sigma", "lam"),
    [
        (0.2, 0.01, 1e-4, 0.0, 0.0),  # heteroscedastic sensor noise
        (0.6, 1e-3, 2e-6, 0.0, 0.0),
        (0.3, 0.0, 0.0, 0.075, 0.0),  # ablation-level Gaussian
        (0.3, 0.0, 0.0, 0.25, 0.03),  # low light: Poisson + Gaussian
        (0.05, 0.0, 0.0, 0.0, 0.02),  # Poisson alone at a dark level (2.5 photo-electrons)
    ],
)
def test_variance_matches_the_model(level: float, shot: float, read: float, sigma: float, lam: float) -> None:
    out = noisy_flat(level, shot, read, sigma, lam)
    expected = shot * level + read + sigma**2 + lam * level
    assert float(out.mean()) == pytest.approx(level, abs=4 * (expected / SIDE**2) ** 0.5)
    assert float(out.var()) == pytest.approx(expected, rel=0.04)


def test_noise_depends_only_on_the_image_seed() -> None:
    a = noisy_flat(0.3, 0.01, 1e-4, 0.05, 0.02, seed=5)
    b = noisy_flat(0.3, 0.01, 1e-4, 0.05, 0.02, seed=5)
    c = noisy_flat(0.3, 0.01, 1e-4, 0.05, 0.02, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_noise_is_identity() -> None:
    assert torch.equal(noisy_flat(0.4, 0.0, 0.0, 0.0, 0.0), torch.full((1, 1, SIDE, SIDE), 0.4))


@pytest.mark.parametrize(("level", "sigma", "lam"), [(0.5, 0.075, 0.0), (0.4, 0.0, 0.02), (0.5, 0.1, 0.03)])
def test_srgb_noise_variance_matches_the_model(level: float, sigma: float, lam: float) -> None:
    srgb = torch.full((1, 3, SIDE, SIDE), level)
    out = add_srgb_noise(srgb, [sigma], [lam], noise_generators([1], srgb.device))
    expected = sigma**2 + lam * level
    assert float(out.var()) == pytest.approx(expected, rel=0.04)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_srgb_noise_is_clipped_and_off_is_identity() -> None:
    dark = torch.zeros((2, 3, 32, 32))
    out = add_srgb_noise(dark, [0.2, 0.0], [0.0, 0.0], noise_generators([1, 2], dark.device))
    assert float(out[0].min()) == 0.0 and float(out[0].max()) > 0.1
    assert torch.equal(out[1], dark[1])
    assert add_srgb_noise(dark, [0.0, 0.0], [0.0, 0.0], []) is dark


def test_noise_is_the_same_drawn_on_one_thread_or_several() -> None:
    raw = torch.rand(5, 1, 40, 48, generator=torch.Generator().manual_seed(2))
    srgb = torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    seeds = [10, 11, 12, 13, 14]
    sigma, lam = [0.1, 0.0, 0.2, 0.05, 0.0], [0.0, 0.03, 0.02, 0.0, 0.0]

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        gens = noise_generators(seeds, raw.device)
        noisy = add_raw_noise(raw, [0.01] * 5, [1e-4] * 5, sigma, lam, gens)
        return noisy, add_srgb_noise(srgb, sigma, lam, gens)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = both()
        torch.set_num_threads(3)
        three = both()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three, strict=True))
    gens = noise_generators(seeds[2:3], raw.device)
    alone = add_raw_noise(raw[2:3], [0.01], [1e-4], sigma[2:3], lam[2:3], gens)
    assert torch.equal(alone, one[0][2:3])
    assert torch.equal(add_srgb_noise(srgb[2:3], sigma[2:3], lam[2:3], gens), one[1][2:3])
