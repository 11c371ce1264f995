"""The composer: clean sRGB -> (inverse ISP) RAW -> noise -> (forward ISP) sRGB -> [noise] -> JPEG.

Shapes and spaces at the boundary: ``clean`` is ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]`` on any device;
``degraded`` has the same shape, dtype and device. Odd ``H`` or ``W``: the image is reflect-padded by one
row/column at the bottom/right to even size for the Bayer mosaic and cropped back before JPEG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from training.isp.errors import ImageError, ParamsError, check_srgb_batch
from training.isp.jpeg import jpeg_compress
from training.isp.noise import add_raw_noise, add_srgb_noise, noise_generators
from training.isp.ops import apply_ccm, per_image, to_device
from training.isp.params import ISPParams
from training.isp.presets import Preset, get_preset
from training.isp.process import (
    apply_raw_gains,
    demosaic,
    denoise,
    gamma_compression,
    tone_curve,
    unsharp_mask,
)
from training.isp.sampler import image_seeds, sample_params, stable_seed
from training.isp.unprocess import gamma_expansion, inverse_smoothstep, invert_gains_mosaic

#: Smallest image side the simulator accepts (the 5x5 demosaic needs two rows/columns of context).
MIN_SIDE = 4

Stages = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SimResult:
    """One simulated degradation of a batch.

    Attributes:
        clean: the input, ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]``.
        degraded: ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]``, same device as ``clean``.
        params: one :class:`ISPParams` per image; ``simulate(clean, params=params)`` reproduces ``degraded``.
        stages: intermediate images by stage name when requested (``keep_stages=True``), else empty. RAW
            stages are ``(N, 1, H', W')``, the others ``(N, 3, H', W')`` with ``H', W'`` the even padded size.
    """

    clean: torch.Tensor
    degraded: torch.Tensor
    params: list[ISPParams]
    stages: Stages = field(default_factory=dict)


def _matrices(params: Sequence[ISPParams], name: str, like: torch.Tensor) -> torch.Tensor:
    """The ``(N, 3, 3)`` colour matrices ``name`` of all images, as ``like``'s dtype and device."""
    matrices = torch.tensor(np.array([getattr(p, name) for p in params]), dtype=like.dtype)
    return to_device(matrices, like.device)


def _column(params: Sequence[ISPParams], name: str, like: torch.Tensor) -> torch.Tensor:
    """The per-image scalar ``name`` of all images as ``(N, 1, 1, 1)``."""
    return per_image([getattr(p, name) for p in params], like)


def unprocess(
    srgb: torch.Tensor,
    params: Sequence[ISPParams],
    stages: Stages | None = None,
    spares: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Inverse ISP: ``(N, 3, H, W)`` sRGB in ``[0, 1]``, ``H, W`` even -> ``(N, 1, H, W)`` clean RAW.

    ``spares``, when given, receives the contiguous ``(N, 3, H, W)`` temporaries that are free when it
    returns (not kept as stages), for :func:`process` to reuse instead of allocating.
    """
    # Undo the global tone curve (smoothstep), giving gamma-encoded sRGB.
    x = inverse_smoothstep(srgb)
    # Undo the display gamma (2.2): linear RGB.
    x = gamma_expansion(x, 2.2, out=x)
    if stages is not None:
        stages["linear RGB"] = x
    # Linear RGB -> this image's camera RGB.
    cam = apply_ccm(x, _matrices(params, "rgb2cam", x))
    # Sample the Bayer mosaic and undo white balance and digital gain there, protecting highlights.
    gains = (_column(params, k, cam) for k in ("rgb_gain", "red_gain", "blue_gain"))
    raw = invert_gains_mosaic(cam, [p.cfa for p in params], *gains)
    if stages is not None:
        stages["RAW (clean)"] = raw
    if spares is not None:
        # x has srgb's memory layout, which need not be contiguous.
        spares.extend([cam] if stages is not None or not x.is_contiguous() else [cam, x])
    return raw


def _protocol_noise(params: Sequence[ISPParams], domain: str) -> tuple[list[float], list[float]]:
    """Per-image Gaussian sigmas and Poisson lambdas, 0 for images whose noise is not in ``domain``."""
    sigma = [p.gaussian_sigma if p.noise_domain == domain else 0.0 for p in params]
    lam = [p.poisson_lambda if p.noise_domain == domain else 0.0 for p in params]
    return sigma, lam


def add_noise(
    raw: torch.Tensor, params: Sequence[ISPParams], generators: Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """Noise in RAW: ``(N, 1, H, W)`` -> ``(N, 1, H, W)``, drawn from each image's ``noise_seed``.

    Sensor shot/read noise always; the protocol's Gaussian/Poisson noise for images with
    ``noise_domain == "raw"``. ``generators`` (one per image) continue into :func:`add_noise_srgb`.
    """
    gens = generators or noise_generators([p.noise_seed for p in params], raw.device)
    sigma, lam = _protocol_noise(params, "raw")
    return add_raw_noise(
        raw,
        shot=[p.shot_noise for p in params],
        read=[p.read_noise for p in params],
        gaussian_sigma=sigma,
        poisson_lambda=lam,
        generators=gens,
    )


def add_noise_srgb(
    srgb: torch.Tensor,
    params: Sequence[ISPParams],
    generators: Sequence[torch.Generator],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The protocol's noise for images with ``noise_domain == "srgb"``: ``(N, 3, H, W)`` in ``[0, 1]``.

    ``out``: where the noisy result goes, as in :func:`~training.isp.noise.add_srgb_noise`.
    """
    sigma, lam = _protocol_noise(params, "srgb")
    return add_srgb_noise(srgb, sigma, lam, generators, out)


def process(
    raw: torch.Tensor,
    params: Sequence[ISPParams],
    stages: Stages | None = None,
    spares: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward ISP: ``(N, 1, H, W)`` RAW -> ``(N, 3, H, W)`` sRGB in ``[0, 1]`` (before JPEG).

    Intermediate ``(N, 3, H, W)`` images are computed in place where the stage allows. ``spares``, when
    given, holds contiguous float ``(N, 3, H, W)`` tensors used nowhere else (e.g. from :func:`unprocess`),
    taken as buffers before new ones are allocated; the buffers free at the end are put back.
    """
    n, _, h, w = raw.shape
    pool = [] if spares is None else spares

    def buffer() -> torch.Tensor:
        return pool.pop() if pool else raw.new_empty(n, 3, h, w)

    cfa = [p.cfa for p in params]
    # White balance and digital gain as the camera set them (with errors), clipped at sensor saturation.
    x = apply_raw_gains(
        raw, cfa, *(_column(params, k, raw) for k in ("digital_gain", "wb_red_gain", "wb_blue_gain"))
    )
    # Demosaic (bilinear or Malvar-He-Cutler) to camera RGB.
    x = demosaic(x, cfa, [p.demosaic for p in params], buffer())
    if stages is not None:
        stages["demosaiced"] = x
    # Optional Gaussian denoise (in place unless the demosaiced image is kept).
    x = denoise(x, [p.denoise_sigma for p in params], None if stages is not None else x)
    # Camera RGB -> linear RGB with the (possibly perturbed) colour matrix.
    y = apply_ccm(x, _matrices(params, "cam2rgb", x), buffer()).clamp_(0.0, 1.0)
    if stages is None:
        pool.append(x)
    # Display gamma.
    y = gamma_compression(y, _column(params, "gamma", y), out=y)
    # Global tone curve.
    x = tone_curve(y, _column(params, "tone_strength", y), buffer())
    if stages is not None:
        stages["gamma + tone"] = x
    # Sharpening (unsharp mask), clipped to [0, 1].
    y = unsharp_mask(x, [p.sharpen_amount for p in params], [p.sharpen_sigma for p in params], y)
    if stages is None:
        pool.append(x)
    return y


def degrade(
    clean: torch.Tensor, params: Sequence[ISPParams], *, jpeg: bool = True, keep_stages: bool = False
) -> SimResult:
    """Degrade ``clean`` ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]`` with the given per-image parameters.

    ``jpeg=False`` skips the JPEG stage (the returned params then record ``jpeg_quality=None``).
    """
    check_srgb_batch(clean)
    n, _, h, w = clean.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"clean images must be at least {MIN_SIDE}x{MIN_SIDE}, got H={h} W={w}")
    if len(params) != n or not all(isinstance(p, ISPParams) for p in params):
        raise ParamsError(f"need one ISPParams per image: {n} images, got {len(params)} records")
    if not jpeg:
        params = [replace(p, jpeg_quality=None) for p in params]
    stages: Stages | None = {} if keep_stages else None
    # Reflect-pad odd sizes to even for the Bayer mosaic.
    x = F.pad(clean, (0, w % 2, 0, h % 2), mode="reflect") if (h % 2 or w % 2) else clean
    # Inverse ISP to clean RAW; its free full-size temporaries are reused by the forward ISP and the noise.
    spares: list[torch.Tensor] = []
    raw = unprocess(x, params, stages, spares)
    # Sensor noise (and the protocol's noise, for noise_domain "raw") in RAW.
    generators = noise_generators([p.noise_seed for p in params], raw.device)
    raw = add_noise(raw, params, generators)
    if stages is not None:
        stages["RAW (noisy)"] = raw
    # Forward ISP with this camera's hyperparameters; crop the padding back.
    out = process(raw, params, stages, spares)[:, :, :h, :w]
    # The protocol's noise for noise_domain "srgb", on the camera's output before compression.
    out = add_noise_srgb(out, params, generators, spares.pop() if spares and out.is_contiguous() else None)
    # JPEG at each image's quality (on the CPU).
    out = jpeg_compress(out, [p.jpeg_quality for p in params])
    return SimResult(clean=clean, degraded=out, params=list(params), stages=stages or {})


def without_noise(params: ISPParams) -> ISPParams:
    """``params`` with every noise source and JPEG off: the same camera, ISP hyperparameters and rendering."""
    return replace(
        params, shot_noise=0.0, read_noise=0.0, gaussian_sigma=0.0, poisson_lambda=0.0, jpeg_quality=None
    )


def render_without_noise(result: SimResult) -> torch.Tensor:
    """The noise-free rendering of a simulated batch: ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]``.

    ``result.clean`` through the same inverse and forward ISP as ``result.degraded`` (camera, white-balance
    and exposure errors, demosaic, colour matrix, gamma, tone curve, the camera's own denoise and sharpening)
    with no sensor or protocol noise and no JPEG: what the camera would have produced without noise. Only
    the demosaic's loss of detail and the rendering separate it from ``result.clean``.
    """
    return degrade(result.clean, [without_noise(p) for p in result.params], jpeg=False).degraded


def _per_image_presets(preset: str | Sequence[str], n: int) -> list[Preset]:
    """``n`` presets: ``preset`` repeated when it is one name, else one per image (checked to be ``n``)."""
    if isinstance(preset, str):
        return [get_preset(preset)] * n
    if len(preset) != n:
        raise ParamsError(f"need one preset name per image: {n} images, got {len(preset)} names")
    return [get_preset(name) for name in preset]


def simulate(
    clean: torch.Tensor,
    preset: str | Sequence[str] = "train",
    *,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    params: Sequence[ISPParams] | None = None,
    jpeg: bool = True,
    keep_stages: bool = False,
) -> SimResult:
    """Draw per-image ISP parameters from ``preset`` and degrade ``clean`` with them.

    Args:
        clean: ``(N, 3, H, W)`` float32 sRGB in ``[0, 1]``, CPU or CUDA.
        preset: a name in :data:`~training.isp.presets.PRESETS`, or one name per image.
        seed: an int (image ``i`` gets ``stable_seed(seed, i)``) or one int per image (e.g. from
            :func:`stable_seed` per file). Exactly one of ``seed``, ``generator``, ``params`` is given.
        generator: a torch generator (any device), advanced by one draw per call.
        params: records from an earlier result, to reproduce it exactly.
        jpeg: ``False`` skips JPEG.
        keep_stages: also return intermediate images (for inspection).

    Returns:
        A :class:`SimResult`; on CPU the same (image, seed) always gives bit-identical output.
    """
    if params is None:
        check_srgb_batch(clean)
        seeds = image_seeds(clean.shape[0], seed, generator)
        params = [
            sample_params(p, s) for p, s in zip(_per_image_presets(preset, len(seeds)), seeds, strict=True)
        ]
    elif seed is not None or generator is not None:
        raise ParamsError("pass params alone, or a seed/generator to draw them, not both")
    return degrade(clean, params, jpeg=jpeg, keep_stages=keep_stages)


def simulate_two_views(
    clean: torch.Tensor,
    preset: str | Sequence[str] = "train",
    *,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    jpeg: bool = True,
) -> tuple[SimResult, SimResult]:
    """Two independent degradations of the same clean batch (Stage I's two views ``x1, x2``).

    ``preset`` is one name or one per image (both views of an image draw from the same preset). The second
    view's per-image seed is derived from the first's, so both are reproducible from one seed.
    """
    check_srgb_batch(clean)
    seeds = image_seeds(clean.shape[0], seed, generator)
    presets = _per_image_presets(preset, len(seeds))
    first = [sample_params(p, s) for p, s in zip(presets, seeds, strict=True)]
    second = [sample_params(p, stable_seed(s, "second view")) for p, s in zip(presets, seeds, strict=True)]
    return degrade(clean, first, jpeg=jpeg), degrade(clean, second, jpeg=jpeg)
