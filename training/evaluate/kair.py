"""Colour DnCNN-blind and colour FFDNet (KAIR model-zoo weights), written from the weights' SOURCE.md.

Both take and return ``(N, 3, H, W)`` float32 sRGB in [0, 1]. The weights live in
``<data root>/kair_denoisers/model_zoo/`` and are never copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.evaluate.errors import MethodUnavailableError


def _conv_stack(in_ch: int, width: int, out_ch: int, depth: int) -> nn.Sequential:
    """``depth`` 3x3 convs (pad 1, bias): ReLU after every conv but the last; indices match KAIR keys."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(width, out_ch, 3, padding=1))
    return nn.Sequential(*layers)


class DnCNNColorBlind(nn.Module):
    """CDnCNN-B: 20 convs of 64 channels (BatchNorm merged); predicts the noise, clean = noisy - noise."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _conv_stack(3, 64, 3, depth=20)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """``noisy`` (N, 3, H, W) in [0, 1] -> denoised (N, 3, H, W), not clipped."""
        return noisy - self.model(noisy)


class FFDNetColor(nn.Module):
    """FFDNet colour: pixel-unshuffle by 2, a noise-level map, 12 convs of 96 channels, pixel-shuffle back."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _conv_stack(13, 96, 12, depth=12)

    def forward(self, noisy: torch.Tensor, sigma_255: torch.Tensor) -> torch.Tensor:
        """``noisy`` (N, 3, H, W) in [0, 1]; ``sigma_255`` (N,) noise std, 0-255 scale -> (N, 3, H, W)."""
        h, w = noisy.shape[-2:]
        x = F.pad(noisy, (0, w % 2, 0, h % 2), mode="replicate")
        x = F.pixel_unshuffle(x, 2)
        level = (sigma_255.to(x) / 255.0).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
        y = self.model(torch.cat([x, level], dim=1))
        return F.pixel_shuffle(y, 2)[..., :h, :w]


def _load(net: nn.Module, path: Path) -> nn.Module:
    if not path.is_file():
        raise MethodUnavailableError(f"KAIR weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def load_dncnn_color_blind(model_zoo: Path) -> DnCNNColorBlind:
    """Build :class:`DnCNNColorBlind` with ``model_zoo/dncnn_color_blind.pth``."""
    net = _load(DnCNNColorBlind(), model_zoo / "dncnn_color_blind.pth")
    assert isinstance(net, DnCNNColorBlind)
    return net


def load_ffdnet_color(model_zoo: Path) -> FFDNetColor:
    """Build :class:`FFDNetColor` with ``model_zoo/ffdnet_color.pth``."""
    net = _load(FFDNetColor(), model_zoo / "ffdnet_color.pth")
    assert isinstance(net, FFDNetColor)
    return net
