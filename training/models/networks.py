"""The convolutional networks of DiR: Gaussian encoders (DiRNet, DfRNet, joint), decoder D*, discriminator F.

Images are (N, 3, H, W) float32 sRGB in [0, 1] with H, W divisible by 4; latents are (N, C, H/4, W/4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.config import ModelConfig

_SLOPE = 0.2
_LOGVAR_INIT = -4.0
_GATE_BIAS_INIT = -2.0


def _act() -> nn.Module:
    return nn.LeakyReLU(_SLOPE, inplace=True)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a LeakyReLU between them and an identity skip; shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), _act(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, C, h, w)."""
        return x + self.body(x)


def _encoder_trunk(in_channels: int, cfg: ModelConfig) -> nn.Sequential:
    w0, w1, w2 = cfg.widths
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, w0, 3, padding=1),
        _act(),
        nn.Conv2d(w0, w1, 4, stride=2, padding=1),
        _act(),
        nn.Conv2d(w1, w2, 4, stride=2, padding=1),
        _act(),
    ]
    layers += [ResBlock(w2) for _ in range(cfg.enc_res_blocks)]
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """VAE-type encoder p(r|x) = N(mu, diag(exp(logvar))) with a spatial latent (pix2pix-style trunk).

    Used as DiRNet p_phi(r|x) (in_channels=3), DfRNet q(r*|y*) (in_channels=3) and the joint encoder
    p(r|x1, x2) (in_channels=6, the two views concatenated on channels).
    """

    def __init__(self, cfg: ModelConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.trunk = _encoder_trunk(in_channels, cfg)
        self.head = nn.Conv2d(cfg.widths[2], 2 * cfg.latent_channels, 3, padding=1)
        self.logvar_clamp = cfg.logvar_clamp
        # Start with small posterior noise (sigma ~ e^-2) so early samples carry the signal of mu.
        bias = self.head.bias
        assert bias is not None
        with torch.no_grad():
            bias[cfg.latent_channels :].fill_(_LOGVAR_INIT)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, in_channels, H, W) in [0, 1] -> (mu, logvar), each (N, C, H/4, W/4); logvar clamped."""
        mu, logvar = self.head(self.trunk(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-self.logvar_clamp, self.logvar_clamp)


class PlainEncoder(nn.Module):
    """Deterministic encoder of the same size as :class:`GaussianEncoder` (the auto-encoder baseline)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.trunk = _encoder_trunk(3, cfg)
        self.head = nn.Conv2d(cfg.widths[2], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> latent (N, C, H/4, W/4) (the first C of the head's 2C channels)."""
        return self.head(self.trunk(x)).chunk(2, dim=1)[0]


class Decoder(nn.Module):
    """Decoder D*: latent (N, C, H/4, W/4) -> image (N, 3, H, W), sRGB, unclamped (clamp to view)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.widths
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w2, 3, padding=1), _act()]
        layers += [ResBlock(w2) for _ in range(cfg.dec_res_blocks)]
        layers += [
            nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1),
            _act(),
            nn.ConvTranspose2d(w1, w0, 4, stride=2, padding=1),
            _act(),
            nn.Conv2d(w0, 3, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, r: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, 3, 4h, 4w); centred on 0.5 so an untrained decoder outputs mid-grey."""
        return self.body(r) + 0.5


class DetailGate(nn.Module):
    """The ``gated`` denoise decode's gate: per-pixel weight m of the input against its decoded denoising.

    Input: the degraded image x and the decoded denoiser latent D*(den(x)), each (N, 3, H, W) sRGB, and
    their difference; three 3x3 convolutions at full resolution -> m (N, 1, H, W) in [0, 1]. Starts at
    m = sigmoid(-2) = 0.12 everywhere (last convolution zero, bias -2): close to the plain decode.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.gate_width
        self.body = nn.Sequential(
            nn.Conv2d(9, w, 3, padding=1),
            _act(),
            nn.Conv2d(w, w, 3, padding=1),
            _act(),
            nn.Conv2d(w, 1, 3, padding=1),
        )
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, _GATE_BIAS_INIT)

    def forward(self, image: Tensor, decoded: Tensor) -> Tensor:
        """Two (N, 3, H, W) sRGB images -> gate (N, 1, H, W) in [0, 1]."""
        return torch.sigmoid(self.body(torch.cat([image, decoded, image - decoded], dim=1)))


class Discriminator(nn.Module):
    """F(r, x) of the Jensen-Shannon MI bound (Eq. 1): one score per latent location.

    The image goes through two 4x4 stride-2 convolutions to the latent grid, is concatenated with r and
    scored by two 1x1 convolutions ("local" MI as in Deep InfoMax).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.disc_width
        self.image = nn.Sequential(
            nn.Conv2d(3, d, 4, stride=2, padding=1), _act(), nn.Conv2d(d, d, 4, stride=2, padding=1), _act()
        )
        self.score = nn.Sequential(nn.Conv2d(d + cfg.latent_channels, d, 1), _act(), nn.Conv2d(d, 1, 1))

    def forward(self, r: Tensor, x: Tensor) -> Tensor:
        """r (N, C, H/4, W/4), x (N, 3, H, W) in [0, 1] -> scores (N, 1, H/4, W/4), unbounded logits."""
        return self.score(torch.cat([r, self.image(x)], dim=1))
