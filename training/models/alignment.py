"""Alignment network A (paper Sec. 3.3, Fig. 3): r+ = A(r0, pilot), all at latent resolution.

A1: ``m1`` 3x3 convolutions on r0. A2: ``m2`` guided layers, each summing a G-Conv branch (per-sample
depthwise kernels predicted from the pilot DfR) and a spatial-attention branch. A3: ``m3`` 3x3 convolutions
down to the latent channels. Latents are (N, C, h, w) with h = H/4, w = W/4.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from training.models.config import ModelConfig
from training.models.networks import ResBlock

_SLOPE = 0.2


def dynamic_depthwise_conv(features: Tensor, kernels: Tensor) -> Tensor:
    """Apply one k x k kernel per sample and channel ("G-Conv"), zero padding, stride 1.

    features (N, F, h, w); kernels (N, F, k, k) with k odd -> (N, F, h, w). Written as k*k shifted
    multiply-adds (a fixed Python loop over kernel taps, no data-dependent control flow) so it exports to
    ONNX with a dynamic batch, which a grouped convolution with groups = N*F would not.
    """
    k = kernels.shape[-1]
    pad = k // 2
    h, w = features.shape[-2], features.shape[-1]
    padded = nn.functional.pad(features, (pad, pad, pad, pad))
    out = torch.zeros_like(features)
    for i in range(k):
        for j in range(k):
            tap = kernels[:, :, i : i + 1, j : j + 1]
            out = out + padded[:, :, i : i + h, j : j + w] * tap
    return out


class GuidedLayer(nn.Module):
    """One layer of A2: f_k (G-Conv with kernels from the pilot) + f_a (features x sigmoid attention).

    Guide branch: pilot (N, Cg, h, w) -> two 3x3 convs -> g (N, F, h, w) -> global average pool -> FC -> F
    kernels of k x k. Attention branch: 1x1 conv on [features, g] -> sigmoid map (N, 1, h, w). The pool is
    over the whole input, so a tile of an image needs the image's pool (``pooled``) to match the whole image.
    """

    def __init__(self, width: int, guide_channels: int, kernel: int, global_path: bool = False) -> None:
        super().__init__()
        self.width = width
        self.kernel = kernel
        # v2's global path: an MLP on the pooled guide statistics predicts the kernels and a per-channel
        # scale and shift (FiLM) of the layer's output, so global exposure, white balance and tone can act
        # on every channel; it starts as the identity (zero last layers), the scale bounded to (0, 2).
        self.film: nn.Module | None = None
        if global_path:
            self.hidden: nn.Module = nn.Sequential(
                nn.Linear(width, width), nn.LeakyReLU(_SLOPE, inplace=True)
            )
            self.film = nn.Linear(width, 2 * width)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        else:
            self.hidden = nn.Identity()
        self.guide = nn.Sequential(
            nn.Conv2d(guide_channels, width, 3, padding=1),
            nn.LeakyReLU(_SLOPE, inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(_SLOPE, inplace=True),
        )
        self.fc = nn.Linear(width, width * kernel * kernel)
        self.attention = nn.Conv2d(2 * width, 1, 1)
        # Start as an identity G-Conv (delta kernels) so early training passes features through.
        nn.init.zeros_(self.fc.weight)
        delta = torch.zeros(width, kernel, kernel)
        delta[:, kernel // 2, kernel // 2] = 1.0
        with torch.no_grad():
            self.fc.bias.copy_(delta.flatten())

    def forward(self, features: Tensor, guide: Tensor, pooled: Tensor | None = None) -> Tensor:
        """features (N, F, h, w), guide (N, Cg, h, w) -> f_k + f_a, (N, F, h, w).

        ``pooled`` (N, F): the spatial mean of the guide features g to predict the kernels from, in place
        of g's mean over this input (a tile passes its whole image's mean); None: g's own mean.
        """
        g = self.guide(guide)
        pool = self.hidden(g.mean(dim=(2, 3)) if pooled is None else pooled)
        kernels = self.fc(pool).reshape(-1, self.width, self.kernel, self.kernel)
        f_k = dynamic_depthwise_conv(features, kernels)
        f_a = features * torch.sigmoid(self.attention(torch.cat([features, g], dim=1)))
        if self.film is None:
            return f_k + f_a
        scale, shift = self.film(pool)[:, :, None, None].chunk(2, dim=1)
        return (f_k + f_a) * (1.0 + torch.tanh(scale)) + shift


class AlignmentNet(nn.Module):
    """A(r0, guide) -> r+, all (N, C, h, w).

    ``guide`` is the pilot DfR (full method) or r0 itself (the no-pilot ablation).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, f = cfg.latent_channels, cfg.align_width
        a1: list[nn.Module] = []
        for i in range(cfg.align_m1):
            a1 += [nn.Conv2d(c if i == 0 else f, f, 3, padding=1), nn.LeakyReLU(_SLOPE, inplace=True)]
        self.a1 = nn.Sequential(*a1)
        self.a2 = nn.ModuleList([GuidedLayer(f, c, cfg.gconv_kernel) for _ in range(cfg.align_m2)])
        self.a2_act = nn.LeakyReLU(_SLOPE, inplace=False)
        a3: list[nn.Module] = []
        for i in range(cfg.align_m3):
            last = i == cfg.align_m3 - 1
            a3.append(nn.Conv2d(f, c if last else f, 3, padding=1))
            if not last:
                a3.append(nn.LeakyReLU(_SLOPE, inplace=True))
        self.a3 = nn.Sequential(*a3)
        self.residual = cfg.align_residual
        if self.residual:
            # Start as the identity on the guide: r+ = pilot until A has learnt a correction.
            last_conv = self.a3[-1]
            assert isinstance(last_conv, nn.Conv2d)
            nn.init.zeros_(last_conv.weight)
            if last_conv.bias is not None:
                nn.init.zeros_(last_conv.bias)

    def guide_features(self, guide: Tensor) -> Tensor:
        """guide (N, C, h, w) -> the per-position guide features g of every guided layer, (N, m2*F, h, w).

        Layer order: channels [i*F, (i+1)*F) belong to ``a2[i]``. Their spatial mean is what each layer
        pools; :meth:`forward` takes that mean as ``guide_mean``.
        """
        return torch.cat([cast(GuidedLayer, layer).guide(guide) for layer in self.a2], dim=1)

    def forward(self, r0: Tensor, guide: Tensor, guide_mean: Tensor | None = None) -> Tensor:
        """r0 (N, C, h, w), guide (N, C, h, w) -> r+ (N, C, h, w) (= guide + A3(...) when residual).

        ``guide_mean`` (N, m2*F): the spatial mean of :meth:`guide_features` over the whole image, used by
        the guided layers instead of the mean over this input (None: this input's own mean).
        """
        pools: list[Tensor | None] = (
            [None] * len(self.a2) if guide_mean is None else list(guide_mean.chunk(len(self.a2), dim=1))
        )
        x = self.a1(r0)
        for layer, pooled in zip(self.a2, pools, strict=True):
            x = self.a2_act(layer(x, guide, pooled))
        out = self.a3(x)
        return guide + out if self.residual else out


class ContextLevel(nn.Module):
    """One internal down/up level of A v2: x + up(blocks(down(x))), the blocks at half the latent
    resolution (rounded up), for context. (N, F, h, w) -> (N, F, h, w) for any h, w (no parity needed)."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(_SLOPE))
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.up = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, F, h, w) -> (N, F, h, w)."""
        low = self.blocks(self.down(x))
        return x + self.up(nn.functional.interpolate(low, size=x.shape[-2:], mode="nearest"))


class AlignmentNetV2(AlignmentNet):
    """A v2 (``align_arch: v2``, docs/DECISIONS.md): Fig. 3's A1 / A2 / A3 with 4 / 2 / 4 stages, each A1 and
    A3 stage a residual block of width ``align_width``; the last two stages of A1 and the first two of A3 run
    inside one down/up level (:class:`ContextLevel`); A2's guided layers have the global path (an MLP on the
    pooled guide statistics predicting the G-Conv kernels and a FiLM scale and shift). Same interface and
    two-pass tiling as :class:`AlignmentNet`; r+ = guide + A3(...) (always residual).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        c, f = cfg.latent_channels, cfg.align_width
        if cfg.align_m1 < 2 or cfg.align_m3 < 2:
            raise ValueError("A v2 needs at least 2 stages in A1 and in A3 (two run in the context level)")
        self.a1 = nn.Sequential(
            nn.Conv2d(c, f, 3, padding=1),
            nn.LeakyReLU(_SLOPE, inplace=True),
            *[ResBlock(f) for _ in range(cfg.align_m1 - 2)],
            ContextLevel(f, 2),
        )
        self.a2 = nn.ModuleList(
            [GuidedLayer(f, c, cfg.gconv_kernel, global_path=True) for _ in range(cfg.align_m2)]
        )
        self.a2_act = nn.LeakyReLU(_SLOPE, inplace=False)
        out = nn.Conv2d(f, c, 3, padding=1, bias=False)
        nn.init.zeros_(out.weight)
        self.a3 = nn.Sequential(ContextLevel(f, 2), *[ResBlock(f) for _ in range(cfg.align_m3 - 2)], out)
        self.residual = True
        _identity_init(self)


def _identity_init(net: nn.Module) -> None:
    """Zero the last convolution of every residual branch (each :class:`ResBlock`'s body and each
    :class:`ContextLevel`'s up-projection), so every branch starts as the identity and the stack of
    unnormalised blocks starts no deeper than its skips; at lr 1e-3 the default initialisation blew the loss
    up within 100 steps (docs/log/2026-12-04-align-v2-cpu-check.md)."""
    for module in net.modules():
        last = None
        if isinstance(module, ResBlock):
            last = module.body[-1]
        elif isinstance(module, ContextLevel):
            last = module.up
        if isinstance(last, nn.Conv2d):
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)


def build_alignment(cfg: ModelConfig) -> AlignmentNet:
    """The alignment network of ``cfg.align_arch``: ``v1`` (:class:`AlignmentNet`) or ``v2``
    (:class:`AlignmentNetV2`)."""
    if cfg.align_arch == "v1":
        return AlignmentNet(cfg)
    if cfg.align_arch == "v2":
        return AlignmentNetV2(cfg)
    raise ValueError(f"unknown align_arch {cfg.align_arch!r}; choose v1 or v2")
