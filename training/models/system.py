"""The assembled DiR system (full method and ablations), its registry of parts, and :func:`load_system`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from modelstore.manifest import sha256_file
from training.errors import CheckpointError
from training.models.alignment import AlignmentNet, build_alignment
from training.models.config import ModelConfig
from training.models.networks import Decoder, DetailGate, Discriminator, GaussianEncoder, PlainEncoder

Variant = Literal["full", "no_pilot", "r0_only", "autoencoder"]
VARIANTS: tuple[Variant, ...] = ("full", "no_pilot", "r0_only", "autoencoder")

# Every network, by name, built from a ModelConfig (explicit registry; no folder scanning).
MODEL_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "dirnet": lambda c: GaussianEncoder(c, in_channels=3),
    "joint_encoder": lambda c: GaussianEncoder(c, in_channels=6),
    "dfrnet": lambda c: GaussianEncoder(c, in_channels=3),
    "decoder": Decoder,
    "discriminator": Discriminator,
    "alignment": build_alignment,
    "ae_encoder": PlainEncoder,
    "denoiser": lambda c: GaussianEncoder(c, in_channels=3),
    "detail_gate": DetailGate,
}

#: How the ``denoise`` mode decodes (``ModelConfig.denoise_decode``), and the trained parts of each.
DENOISE_DECODES = ("image", "gated")
DENOISE_PARTS: dict[str, tuple[str, ...]] = {"image": ("denoiser",), "gated": ("denoiser", "detail_gate")}

# Which networks each variant's restoration path holds (the names of DiRSystem's submodules).
VARIANT_PARTS: dict[Variant, tuple[str, ...]] = {
    "full": ("dirnet", "dfrnet", "decoder", "alignment"),
    "no_pilot": ("dirnet", "dfrnet", "decoder", "alignment"),
    "r0_only": ("dirnet", "decoder"),
    "autoencoder": ("ae_encoder", "decoder"),
}


def build_model(name: str, cfg: ModelConfig) -> nn.Module:
    """Instantiate the registered network ``name`` (see ``MODEL_REGISTRY``)."""
    if name not in MODEL_REGISTRY:
        raise CheckpointError(f"unknown model {name!r}; registered: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](cfg)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a :class:`ModelConfig` from its ``asdict`` form (lists become tuples)."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(d) - known
    if unknown:
        raise CheckpointError(f"model config has unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return ModelConfig(**values)


def checkpoint_name(stage: str, variant: str | None = None) -> str:
    """File name of a stage's checkpoint inside a run folder: stage1.pt, stage2.pt, ablation-<variant>.pt."""
    return f"ablation-{variant}.pt" if stage == "ablation" else f"{stage}.pt"


class DiRSystem(nn.Module):
    """Degraded camera image -> refined DiR r+ -> restored image, for one variant.

    ``full``: r0 = mean of DiRNet(x), pilot = mean of DfRNet(x), r+ = A(r0, pilot), restored = D*(r+).
    ``no_pilot``: as full with r0 as A's guide. ``r0_only``: restored = D(r0) with a decoder trained on r0.
    ``autoencoder``: a plain encoder/decoder of equal size. All latents are (N, C, H/4, W/4).

    ``denoiser=True`` (full only) adds the ``denoise`` mode's encoder, a DfRNet-shaped encoder trained by
    ``dir-train denoise`` so that D*(its mean) is the input's noise-free rendering (:meth:`denoise`), and,
    when ``cfg.denoise_decode`` is ``gated``, its ``detail_gate``.
    """

    def __init__(self, cfg: ModelConfig, variant: Variant = "full", denoiser: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise CheckpointError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        if denoiser and variant != "full":
            raise CheckpointError(f"only the full variant carries a denoiser, not {variant!r}")
        self.cfg = cfg
        self.variant: Variant = variant
        for name in VARIANT_PARTS[variant]:
            self.add_module(name, build_model(name, cfg))
        if cfg.denoise_decode not in DENOISE_DECODES:
            raise CheckpointError(
                f"unknown denoise_decode {cfg.denoise_decode!r}; choose one of {DENOISE_DECODES}"
            )
        if denoiser:
            self.add_module("denoiser", build_model("denoiser", cfg))
            if cfg.denoise_decode == "gated":
                self.add_module("detail_gate", build_model("detail_gate", cfg))

    @property
    def parts(self) -> tuple[str, ...]:
        """Names of the networks this system holds: its variant's, then the denoise mode's (``denoiser``
        and, for the gated decode, ``detail_gate``) when it has them."""
        return VARIANT_PARTS[self.variant] + (
            DENOISE_PARTS[self.cfg.denoise_decode] if self.has_denoiser else ()
        )

    @property
    def has_denoiser(self) -> bool:
        """Whether the ``denoise`` mode uses a trained denoiser (else DfRNet, see :meth:`denoise`)."""
        return "denoiser" in self._modules

    def without_denoiser(self) -> DiRSystem:
        """This system without its denoiser: a new system holding the same network objects (not copies).

        Exporting graphs from it keeps them byte for byte what they are without a denoiser (an unused
        denoiser would shift the exporter's numbering of constants)."""
        if not self.has_denoiser:
            return self
        core = DiRSystem(self.cfg, self.variant)
        for name in VARIANT_PARTS[self.variant]:
            core.add_module(name, self.get_submodule(name))
        return core.train(self.training)

    def denoise(self, image: Tensor) -> Tensor:
        """The ``denoise`` mode: image (N, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 -> (N, 3, H, W)
        in [0, 1], noise and JPEG artefacts removed, the camera's colour and tone kept.

        D*(mean of the denoiser(image)) when the system has a denoiser, else D*(mean of DfRNet(image));
        with the ``gated`` decode, blended per pixel with the input first (:meth:`denoise_unclamped`).
        """
        return self.denoise_unclamped(image).clamp(0.0, 1.0)

    def denoise_unclamped(self, image: Tensor) -> Tensor:
        """:meth:`denoise` before the clamp (the training target's scale): (N, 3, H, W) sRGB, unbounded.

        ``gated``: D*(den(x)) + m * (x - D*(den(x))), m = detail_gate(x, D*(den(x))) in [0, 1]: where the
        gate opens the input's own pixels stay (texture D* cannot reproduce, a clean photo unchanged
        whatever D*'s reconstruction error); where it closes the decoded denoising replaces them.
        """
        decoder = self.get_submodule("decoder")
        if not self.has_denoiser:
            return cast(Tensor, decoder(self.get_submodule("dfrnet")(image)[0]))
        decoded = cast(Tensor, decoder(self.get_submodule("denoiser")(image)[0]))
        if self.cfg.denoise_decode == "image":
            return decoded
        gate = self.get_submodule("detail_gate")(image, decoded)
        return decoded + gate * (image - decoded)

    @property
    def size_multiple(self) -> int:
        """H and W given to :meth:`forward` must be multiples of this (the latent downsampling, 4)."""
        return self.cfg.downsample

    def guide_features(self, image: Tensor) -> Tensor:
        """image (N, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 -> (N, m2*F, H/4, W/4).

        The per-position guide features g of A's guided layers (see :meth:`AlignmentNet.guide_features`),
        computed from the pilot (full) or r0 (no_pilot). Their spatial mean over a whole image is the
        ``guide_mean`` that makes :meth:`forward` on any tile of it use the whole image's global pooling.
        """
        if self.variant not in ("full", "no_pilot"):
            raise CheckpointError(f"variant {self.variant!r} has no alignment network, hence no guide")
        encoder = "dfrnet" if self.variant == "full" else "dirnet"
        guide = self.get_submodule(encoder)(image)[0]
        return cast(AlignmentNet, self.get_submodule("alignment")).guide_features(guide)

    def forward(self, image: Tensor, guide_mean: Tensor | None = None) -> dict[str, Tensor]:
        """image (N, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 -> dict of tensors.

        Keys: ``restored`` (N, 3, H, W) clamped to [0, 1]; ``r_plus`` and ``r0`` (N, C, H/4, W/4); and
        ``pilot`` (same shape) for the variants that compute one (full, no_pilot). ``guide_mean``
        (N, m2*F), full and no_pilot only: the spatial mean of :meth:`guide_features` over the whole image
        this input is a tile of, replacing the guided layers' pooling over ``image`` alone; None pools
        over ``image`` (the same as passing its own mean).
        """
        out: dict[str, Tensor] = {}
        if self.variant == "autoencoder":
            r0 = self.get_submodule("ae_encoder")(image)
            r_plus = r0
        else:
            r0 = self.get_submodule("dirnet")(image)[0]
            r_plus = r0
            if self.variant in ("full", "no_pilot"):
                pilot = self.get_submodule("dfrnet")(image)[0]
                guide = pilot if self.variant == "full" else r0
                r_plus = self.get_submodule("alignment")(r0, guide, guide_mean)
                out["pilot"] = pilot
        out["r0"] = r0
        out["r_plus"] = r_plus
        out["restored"] = self.get_submodule("decoder")(r_plus).clamp(0.0, 1.0)
        return out

    @torch.no_grad()
    def restore(self, image: Tensor) -> Tensor:
        """Restore any-size images: (N, 3, H, W) float32 sRGB [0, 1] -> (N, 3, H, W) in [0, 1].

        Pads (replicate) to the next multiple of :attr:`size_multiple`, runs :meth:`forward`, crops back.
        """
        h, w = image.shape[-2], image.shape[-1]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        x = nn.functional.pad(image, (0, pw, 0, ph), mode="replicate") if ph or pw else image
        return self.forward(x)["restored"][..., :h, :w]


def _resolve(path: Path, variant: Variant) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint file or run folder at {path}")
    name = checkpoint_name("stage2") if variant == "full" else checkpoint_name("ablation", variant)
    if variant == "full" and (path / checkpoint_name("denoise")).is_file():
        # The denoise stage's checkpoint holds the whole full system (as it started) plus its denoiser.
        name = checkpoint_name("denoise")
    if not (path / name).is_file():
        raise CheckpointError(f"run folder {path} has no {name} (train it with dir-train first)")
    return path / name


def load_system(
    path: str | Path, variant: Variant | None = None, device: str | torch.device = "cpu"
) -> DiRSystem:
    """Load a trained :class:`DiRSystem` in eval mode.

    ``path``: a checkpoint file (stage2.pt, denoise.pt, ablation-<variant>.pt) or a run folder. ``variant``:
    None means the checkpoint's own variant (``full`` for a run folder); given with a file, it must match.
    A run folder's full system is its ``denoise.pt`` when it has one (the full system plus the denoiser),
    else its ``stage2.pt``; a ``denoise.pt`` started from an earlier ``stage2.pt`` than the folder's raises
    :class:`CheckpointError` (rerun ``dir-train denoise``).
    """
    want: Variant = variant or "full"
    file = _resolve(Path(path), want)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc}") from exc
    started = ckpt.get("init_from") or {}
    stage2 = file.parent / checkpoint_name("stage2")
    if "stage2_sha256" in started and stage2.is_file() and sha256_file(stage2) != started["stage2_sha256"]:
        raise CheckpointError(
            f"{file} was trained from an earlier {stage2.name}; rerun dir-train denoise on the current one"
        )
    stored = cast(Variant | None, ckpt.get("variant"))
    if stored is None:
        raise CheckpointError(f"{file} is a {ckpt.get('stage')} checkpoint, not a restoration system")
    if variant is not None and stored != variant:
        raise CheckpointError(f"{file} holds variant {stored!r}, not the requested {variant!r}")
    system = DiRSystem(model_config_from_dict(ckpt["model_config"]), stored, "denoiser" in ckpt["modules"])
    for name in system.parts:
        system.get_submodule(name).load_state_dict(ckpt["modules"][name])
    return system.to(device).eval()


def system_state(system: DiRSystem) -> dict[str, Any]:
    """The parts of a checkpoint that :func:`load_system` reads (variant, model config, module weights)."""
    return {
        "variant": system.variant,
        "model_config": asdict(system.cfg),
        "modules": {n: system.get_submodule(n).state_dict() for n in system.parts},
    }
