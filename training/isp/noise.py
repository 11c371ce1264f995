"""Noise: heteroscedastic sensor noise and extra Gaussian/Poisson noise, in RAW or in sRGB."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.isp.ops import for_each_image, per_image


def noise_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One torch generator per image on ``device``, seeded with that image's noise seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def add_raw_noise(
    raw: torch.Tensor,
    shot: Sequence[float],
    read: Sequence[float],
    gaussian_sigma: Sequence[float],
    poisson_lambda: Sequence[float],
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Noisy RAW: ``(N, 1, H, W)`` clean RAW in ``[0, 1]`` -> ``(N, 1, H, W)`` (not clipped).

    Per image ``n`` (one value of ``shot``, ``read``, ``gaussian_sigma``, ``poisson_lambda`` per image):

    * Poisson, when ``poisson_lambda[n] > 0``: ``x -> Poisson(x / lambda) * lambda`` (mean ``x``, variance
      ``lambda * x``: a sensor with ``1 / lambda`` photo-electrons at white).
    * Gaussian with variance ``shot * x + read + gaussian_sigma ** 2``: Brooks' heteroscedastic shot/read
      model plus the evaluation protocols' signal-independent Gaussian noise.

    Image ``n``'s noise depends only on ``generators[n]``, so it does not depend on the rest of the batch or
    on the thread count: on the CPU the images draw on up to ``torch.get_num_threads()`` threads at once (one
    generator's draws are serial).
    """
    z = torch.empty_like(raw)
    lambdas = [float(v) for v in poisson_lambda]
    x = raw.clone() if any(v > 0 for v in lambdas) else raw

    def draw(i: int) -> None:
        z[i].normal_(generator=generators[i])
        if lambdas[i] > 0:
            x[i] = torch.poisson(raw[i].clamp_min(0.0) / lambdas[i], generator=generators[i]) * lambdas[i]

    for_each_image(draw, len(generators), raw.device.type == "cpu")
    read_t, sigma_t = per_image(read, raw), per_image(gaussian_sigma, raw)
    if all(v == 0 for v in shot):
        # Signal-independent: one standard deviation per image (0 * x + read == read exactly).
        std = (read_t + sigma_t**2).sqrt_()
    else:
        std = raw.clamp_min(0.0).mul_(per_image(shot, raw)).add_(read_t).add_(sigma_t**2).sqrt_()
    return z.mul_(std).add_(x)


def add_srgb_noise(
    srgb: torch.Tensor,
    gaussian_sigma: Sequence[float],
    poisson_lambda: Sequence[float],
    generators: Sequence[torch.Generator],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noisy sRGB: ``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, H, W)`` clipped to ``[0, 1]``.

    Per image ``n``: Poisson ``x -> Poisson(x / lambda) * lambda`` when ``poisson_lambda[n] > 0``, then
    Gaussian noise of standard deviation ``gaussian_sigma[n]``, independent per pixel and
    channel, drawn as in :func:`add_raw_noise`. Images whose sigma and lambda are both 0 pass through
    unchanged and consume no draws. When any noise is added, the result goes into ``out`` if given (a
    contiguous tensor of ``srgb``'s shape other than ``srgb``); with no noise at all, ``srgb`` itself is
    returned.
    """
    sigmas = [float(v) for v in gaussian_sigma]
    lambdas = [float(v) for v in poisson_lambda]
    if not any(s > 0 for s in sigmas) and not any(v > 0 for v in lambdas):
        return srgb
    x = srgb.clone() if any(v > 0 for v in lambdas) else srgb
    z = torch.empty_like(srgb) if out is None else out
    if not all(s > 0 for s in sigmas):
        z.zero_()

    def draw(i: int) -> None:
        if lambdas[i] > 0:
            x[i] = torch.poisson(srgb[i].clamp_min(0.0) / lambdas[i], generator=generators[i]) * lambdas[i]
        if sigmas[i] > 0:
            z[i].normal_(generator=generators[i])

    for_each_image(draw, len(generators), srgb.device.type == "cpu")
    return z.mul_(per_image(sigmas, srgb)).add_(x).clamp_(0.0, 1.0)
