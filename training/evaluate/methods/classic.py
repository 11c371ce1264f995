"""Classic peers: the identity reference, BM3D and OpenCV NLM, blind (noise level estimated per image)
and oracle (told the true noise level or the best filter strength against the reference).

Inputs and outputs ``(N, 3, H, W)`` float32 sRGB in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import bm3d
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.evaluate.methods.base import MethodContext, OracleRestorer, RestoreFn
from training.evaluate.metrics import estimate_noise_sigma

NLM_H_PER_SIGMA = 0.8
NLM_H_FLOOR = 3.0
"""OpenCV NLM filter strength h = hColor = max(3, 0.8 x estimated sigma) on the 0-255 scale: the rule a
user applies (the wavelet estimate reads real and JPEG noise low, so the floor keeps NLM filtering)."""
NLM_ORACLE_H = (2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 27.0)
"""The h grid of ``nlm-oracle``: the best of these per image, judged against the reference."""


def per_image(fn: Callable[[np.ndarray], np.ndarray]) -> RestoreFn:
    """Lift an HWC float32 [0, 1] numpy denoiser to a batched tensor restorer."""

    def restore(batch: torch.Tensor) -> torch.Tensor:
        outs = []
        for img in batch:
            hwc = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy(), dtype=np.float32)
            outs.append(torch.from_numpy(np.ascontiguousarray(fn(hwc), dtype=np.float32)).permute(2, 0, 1))
        return torch.stack(outs).clamp(0.0, 1.0)

    return restore


def sigma_hwc(hwc: np.ndarray) -> float:
    return estimate_noise_sigma(torch.from_numpy(hwc).permute(2, 0, 1))


def oracle_noise_sigma(degraded: torch.Tensor, clean: torch.Tensor) -> float:
    """The true noise level of one degraded image ``(1, 3, H, W)``: the standard deviation of the high-pass
    part of ``degraded - clean`` (residual minus its 9x9 local mean, so colour and tone shifts drop out)."""
    r = (degraded - clean).double()
    return float((r - F.avg_pool2d(r, 9, 1, 4, count_include_pad=False)).std())


def oracle(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> OracleRestorer:
    def restore(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        outs = [
            fn(d[None], oracle_noise_sigma(d[None], c[None])) for d, c in zip(degraded, clean, strict=True)
        ]
        return torch.cat(outs).clamp(0.0, 1.0)

    return restore


def build_identity(ctx: MethodContext) -> RestoreFn:
    return lambda batch: batch.clamp(0.0, 1.0)


def _bm3d_image(hwc: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(bm3d.bm3d_rgb(hwc, max(sigma, 1e-3), profile=bm3d.BM3DProfileLC()))


def build_bm3d(ctx: MethodContext) -> RestoreFn:
    return per_image(lambda hwc: _bm3d_image(hwc, sigma_hwc(hwc)))


def build_bm3d_oracle(ctx: MethodContext) -> OracleRestorer:
    def one(degraded: torch.Tensor, sigma: float) -> torch.Tensor:
        return per_image(lambda hwc: _bm3d_image(hwc, sigma))(degraded)

    return oracle(one)


def _nlm_image(hwc: np.ndarray, h: float) -> np.ndarray:
    """OpenCV coloured NLM (template 7, search 21) at strength h = hColor (0-255): (H, W, 3) RGB [0, 1]."""
    bgr = np.ascontiguousarray((hwc[..., ::-1] * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return out[..., ::-1].astype(np.float32) / 255.0


def build_nlm(ctx: MethodContext) -> RestoreFn:
    return per_image(lambda hwc: _nlm_image(hwc, max(NLM_H_FLOOR, NLM_H_PER_SIGMA * sigma_hwc(hwc) * 255.0)))


def build_nlm_oracle(ctx: MethodContext) -> OracleRestorer:
    def best(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        outs = []
        for img, ref in zip(degraded, clean, strict=True):
            hwc = img.permute(1, 2, 0).numpy()
            tries = [torch.from_numpy(_nlm_image(hwc, h)).permute(2, 0, 1) for h in NLM_ORACLE_H]
            outs.append(min(tries, key=lambda t: float(((t - ref) ** 2).mean())))
        return torch.stack(outs)

    return best
