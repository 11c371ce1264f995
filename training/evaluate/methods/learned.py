"""Learned peers: KAIR's DnCNN-B and FFDNet (colour), blind and with an oracle noise level.

Inputs and outputs ``(N, 3, H, W)`` float32 sRGB in [0, 1].
"""

from __future__ import annotations

import torch

from training.evaluate.kair import load_dncnn_color_blind, load_ffdnet_color
from training.evaluate.methods.base import MethodContext, OracleRestorer, RestoreFn
from training.evaluate.methods.classic import oracle
from training.evaluate.metrics import estimate_noise_sigma


def build_dncnn(ctx: MethodContext) -> RestoreFn:
    net = load_dncnn_color_blind(ctx.kair_zoo).to(ctx.device)

    def restore(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(batch.to(ctx.device)).clamp(0.0, 1.0).cpu()

    return restore


def build_ffdnet(ctx: MethodContext) -> RestoreFn:
    net = load_ffdnet_color(ctx.kair_zoo).to(ctx.device)

    def restore(batch: torch.Tensor) -> torch.Tensor:
        sigma = torch.tensor([estimate_noise_sigma(img) * 255.0 for img in batch])
        with torch.inference_mode():
            return net(batch.to(ctx.device), sigma.to(ctx.device)).clamp(0.0, 1.0).cpu()

    return restore


def build_ffdnet_oracle(ctx: MethodContext) -> OracleRestorer:
    net = load_ffdnet_color(ctx.kair_zoo).to(ctx.device)

    def one(degraded: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.inference_mode():
            return net(degraded.to(ctx.device), torch.tensor([sigma * 255.0], device=ctx.device)).cpu()

    return oracle(one)
