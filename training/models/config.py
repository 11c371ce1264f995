"""Architecture hyperparameters shared by every DiR network (our choices, see docs/DECISIONS.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Widths and sizes of the DiR networks.

    All encoders are pix2pix-style: a 3x3 stem at full resolution, two 4x4 stride-2 convolutions and
    ``enc_res_blocks`` residual blocks at 1/4 resolution; the latent is spatial,
    ``latent_channels`` x H/4 x W/4. ``align_residual``: A3's output is added to A's guide (the pilot DfR,
    which already lives in the DfR space of r*), so A learns a correction; ``False`` is Fig. 3 literally.
    ``align_arch``: ``v1`` (the shipped A: plain 3x3 convolutions) or ``v2`` (residual stages, one
    internal down/up level and a global path; :class:`training.models.alignment.AlignmentNetV2`).
    ``denoise_decode`` (the ``denoise`` mode, not in the paper): ``image`` decodes the denoiser's latent,
    D*(den(x)); ``gated`` blends it with the input, D*(den(x)) + m * (x - D*(den(x))), with a per-pixel gate
    m in [0, 1] learnt beside the denoiser (:class:`training.models.networks.DetailGate`).
    """

    latent_channels: int = 16
    widths: tuple[int, int, int] = (32, 64, 96)
    enc_res_blocks: int = 1
    dec_res_blocks: int = 2
    align_width: int = 64
    align_m1: int = 4
    align_m2: int = 2
    align_m3: int = 4
    gconv_kernel: int = 3
    align_residual: bool = True
    disc_width: int = 32
    logvar_clamp: float = 10.0
    denoise_decode: str = "image"
    align_arch: str = "v1"
    gate_width: int = 16

    @property
    def downsample(self) -> int:
        """Spatial reduction of the latent: inputs must have H and W divisible by this (4)."""
        return 4
