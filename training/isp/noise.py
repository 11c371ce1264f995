"""Noise added to the RAW mosaic: heteroscedastic sensor noise, extra Gaussian and Poisson noise."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def noise_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One torch generator per image on ``device``, seeded with that image's noise seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def add_raw_noise(
    raw: torch.Tensor,
    shot: torch.Tensor,
    read: torch.Tensor,
    gaussian_sigma: torch.Tensor,
    poisson_lambda: Sequence[float],
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Noisy RAW: ``(N, 1, H, W)`` clean RAW in ``[0, 1]`` -> ``(N, 1, H, W)`` (not clipped).

    Per image ``n`` (``shot``, ``read``, ``gaussian_sigma`` are ``(N, 1, 1, 1)``):

    * Poisson, when ``poisson_lambda[n] > 0``: ``x -> Poisson(x / lambda) * lambda`` (mean ``x``, variance
      ``lambda * x``: a sensor with ``1 / lambda`` photo-electrons at white).
    * Gaussian with variance ``shot * x + read + gaussian_sigma ** 2``: Brooks' heteroscedastic shot/read
      model plus the evaluation protocols' signal-independent Gaussian noise.

    Image ``n``'s noise depends only on ``generators[n]``, so it does not depend on the rest of the batch.
    """
    z = torch.empty_like(raw)
    for i, g in enumerate(generators):
        z[i].normal_(generator=g)
    x = raw
    lambdas = [float(v) for v in poisson_lambda]
    if any(v > 0 for v in lambdas):
        x = raw.clone()
        for i, lam in enumerate(lambdas):
            if lam > 0:
                x[i] = torch.poisson(raw[i].clamp_min(0.0) / lam, generator=generators[i]) * lam
    variance = shot * raw.clamp_min(0.0) + read + gaussian_sigma**2
    return x + variance.sqrt() * z
