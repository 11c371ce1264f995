"""Per-stage objectives as modules: forward(batch) -> dict of scalar losses (key ``loss`` is minimised).

Wrapping each stage in one module lets DistributedDataParallel see every trainable network through one
forward call. Images are (N, 3, H, W) float32 sRGB [0, 1]; latents (N, C, H/4, W/4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.losses import dfrnet_loss, dirnet_loss, jsd_mi_lower_bound, shuffle_negatives, stage2_loss
from training.models import VARIANT_PARTS, DiRSystem, ModelConfig, Variant, build_model
from training.train.config import LossConfig


def _sample(mu: Tensor, logvar: Tensor) -> Tensor:
    """Reparameterised draw r = mu + sigma * eps (eps from the global torch RNG, saved in checkpoints)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


class Stage1Objective(nn.Module):
    """Stage I: DiRNet (Eq. 5) on two degraded views plus DfRNet/D* (Eq. 6) on the clean image, summed."""

    def __init__(self, cfg: ModelConfig, loss: LossConfig) -> None:
        super().__init__()
        self.loss_cfg = loss
        for name in ("dirnet", "joint_encoder", "dfrnet", "decoder"):
            self.add_module(name, build_model(name, cfg))
        self.discriminator = build_model("discriminator", cfg)
        self.discriminator_star = build_model("discriminator", cfg)

    def forward(self, x1: Tensor, x2: Tensor, clean: Tensor, prior_scale: float = 1.0) -> dict[str, Tensor]:
        """x1, x2: two degraded views of ``clean`` (all (N, 3, H, W)) -> loss terms of Eq. 5 and Eq. 6.

        ``prior_scale`` in [0, 1] multiplies beta and beta_star (the KL warm-up of :func:`prior_scale_at`).
        """
        dirnet, joint = self.get_submodule("dirnet"), self.get_submodule("joint_encoder")
        m1, m2 = dirnet(x1), dirnet(x2)
        mj = joint(torch.cat([x1, x2], dim=1))
        mis = []
        for (mu, logvar), x in ((m1, x1), (m2, x2)):
            r = _sample(mu, logvar)
            mis.append(
                jsd_mi_lower_bound(self.discriminator(r, x), self.discriminator(r, shuffle_negatives(x)))
            )
        l0 = dirnet_loss(mis[0], mis[1], m1, m2, mj, self.loss_cfg.lam, prior_scale * self.loss_cfg.beta)

        mu_s, logvar_s = self.get_submodule("dfrnet")(clean)
        r_s = _sample(mu_s, logvar_s)
        mi_s = jsd_mi_lower_bound(
            self.discriminator_star(r_s, clean), self.discriminator_star(r_s, shuffle_negatives(clean))
        )
        decoded = self.get_submodule("decoder")(r_s)
        ls = dfrnet_loss(mi_s, decoded, clean, (mu_s, logvar_s), prior_scale * self.loss_cfg.beta_star)
        out = {"loss": l0["loss"] + ls["loss"]}
        out.update({f"dir_{k}": v for k, v in l0.items() if k != "loss"})
        out.update({f"dfr_{k}": v for k, v in ls.items() if k != "loss"})
        return out


class _SystemObjective(nn.Module):
    """An objective over a :class:`DiRSystem` some of whose parts are frozen (kept in eval mode)."""

    system: DiRSystem
    frozen_parts: tuple[str, ...]

    def _freeze_parts(self, names: tuple[str, ...]) -> None:
        self.frozen_parts = names
        for name in names:
            _freeze(self.system.get_submodule(name))

    def train(self, mode: bool = True) -> _SystemObjective:
        """Switch the trainable parts' mode; frozen parts always stay in eval mode."""
        super().train(mode)
        for name in self.frozen_parts:
            self.system.get_submodule(name).eval()
        return self


class RestorationObjective(_SystemObjective):
    """Stage II (Eq. 8, restoration: gamma1 = 0) and the ablations trained with the same budget.

    ``full`` / ``no_pilot``: frozen DiRNet, DfRNet, D*; trainable A. ``r0_only``: frozen DiRNet, a new
    decoder trained on r0 with the L1 image loss. ``autoencoder``: encoder and decoder trained end to end.
    """

    def __init__(self, cfg: ModelConfig, loss: LossConfig, variant: Variant) -> None:
        super().__init__()
        self.loss_cfg = loss
        self.system = DiRSystem(cfg, variant)
        frozen: dict[str, tuple[str, ...]] = {
            "full": ("dirnet", "dfrnet", "decoder"),
            "no_pilot": ("dirnet", "dfrnet", "decoder"),
            "r0_only": ("dirnet",),
            "autoencoder": (),
        }
        self._freeze_parts(frozen[variant])

    def forward(self, x: Tensor, clean: Tensor) -> dict[str, Tensor]:
        """x: degraded view of ``clean`` (both (N, 3, H, W)) -> loss terms."""
        s = self.system
        if s.variant in ("full", "no_pilot"):
            with torch.no_grad():
                r0 = s.get_submodule("dirnet")(x)[0]
                r_star = s.get_submodule("dfrnet")(clean)[0]
                guide = s.get_submodule("dfrnet")(x)[0] if s.variant == "full" else r0
            r_plus = s.get_submodule("alignment")(r0, guide)
            decoded = s.get_submodule("decoder")(r_plus)
            cfg = self.loss_cfg
            return stage2_loss(
                r_plus, r_star, decoded, clean, cfg.gamma1, cfg.gamma2, gamma_fit=cfg.gamma_fit
            )
        if s.variant == "r0_only":
            with torch.no_grad():
                r0 = s.get_submodule("dirnet")(x)[0]
        else:
            r0 = s.get_submodule("ae_encoder")(x)
        l1 = (s.get_submodule("decoder")(r0) - clean).abs().mean()
        return {"loss": l1, "image_l1": l1}


class DenoiseObjective(_SystemObjective):
    """The ``denoise`` stage (not in the paper): train the full system's denoiser so that
    D*(mean of denoiser(x)) equals x's noise-free rendering (same camera and ISP, no noise, no JPEG).

    Everything else (DiRNet, DfRNet, A, D*) stays frozen, so the ``full`` mode is unchanged. The denoiser
    starts from DfRNet's weights (D*(DfR(x)) is the untrained ``denoise`` mode); with the ``gated`` decode
    the gate trains beside it (:meth:`DiRSystem.denoise_unclamped`). Loss: L1 on the image.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        if not system.has_denoiser:
            raise ValueError("the denoise stage needs a DiRSystem built with denoiser=True")
        self.system = system
        self._freeze_parts(VARIANT_PARTS["full"])

    def forward(self, x: Tensor, rendered: Tensor) -> dict[str, Tensor]:
        """x: degraded (N, 3, H, W) sRGB [0, 1]; rendered: its noise-free rendering, same shape -> losses."""
        l1 = (self.system.denoise_unclamped(x) - rendered).abs().mean()
        return {"loss": l1, "image_l1": l1}
