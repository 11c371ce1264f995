"""One recipe per training stage: which objective it trains, what it starts from, the data it sees and how
it is scored on the held-out images. :func:`training.train.loop.train_stage` runs any recipe the same way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from modelstore.manifest import read_manifest, sha256_file
from training.data import degrade_seeded, degrade_seeded_with_render
from training.errors import CheckpointError, ConfigError
from training.models import VARIANT_PARTS, VARIANTS, DiRSystem, Variant, checkpoint_name
from training.models.checkpoint import system_from_entry
from training.train.checkpoint import load_checkpoint
from training.train.config import StageConfig, TrainConfig
from training.train.objectives import DenoiseObjective, RestorationObjective, Stage1Objective
from training.train.schedule import prior_scale_at

Stage = Literal["stage1", "stage2", "ablation", "denoise"]
StageKey = Literal["stage1", "stage2", "denoise"]
# Stage I networks that the restoration variants start from (frozen or not, see RestorationObjective).
STAGE1_PARTS: dict[Variant, tuple[str, ...]] = {
    "full": ("dirnet", "dfrnet", "decoder"),
    "no_pilot": ("dirnet", "dfrnet", "decoder"),
    "r0_only": ("dirnet",),
    "autoencoder": (),
}
ABLATION_VARIANTS: tuple[Variant, ...] = ("no_pilot", "r0_only", "autoencoder")


def _init_from_stage1(objective: RestorationObjective, run_dir: Path) -> None:
    names = STAGE1_PARTS[objective.system.variant]
    if not names:
        return
    ckpt = load_checkpoint(run_dir / checkpoint_name("stage1"))
    if ckpt["step"] < ckpt["steps"]:
        raise CheckpointError(
            f"stage1 in {run_dir} stopped at step {ckpt['step']}/{ckpt['steps']}; finish it first"
        )
    for n in names:
        objective.system.get_submodule(n).load_state_dict(ckpt["modules"][n])


def init_from_entry(system: DiRSystem, entry_dir: Path) -> dict[str, Any]:
    """Start Stage II from a model_store entry instead of this run's stage1.pt: the frozen Stage I parts
    (DiRNet, DfRNet, D*) from the entry's weights (:func:`training.export.system_from_entry`), and the
    alignment network A too when the config's A has the entry's shapes (else A starts fresh).

    The config's encoders and decoder must match the entry's (``ConfigError`` names the first mismatch).
    Returns the record kept in the checkpoint and the exported manifest: entry, its model.onnx sha256 and
    the parts loaded.
    """
    if system.variant != "full":
        raise ConfigError("--init-from starts the full method's Stage II; ablations start from stage1.pt")
    source = system_from_entry(entry_dir)
    loaded = []
    for name in (*STAGE1_PARTS["full"], "alignment"):
        want = system.get_submodule(name).state_dict()
        have = source.get_submodule(name).state_dict()
        mismatch = next((k for k in want if k not in have or have[k].shape != want[k].shape), None)
        if mismatch is not None:
            if name == "alignment":
                continue
            shape = tuple(have[mismatch].shape) if mismatch in have else None
            raise ConfigError(
                f"--init-from {entry_dir}: the config's {name} does not match the entry's "
                f"({name}.{mismatch}: config {tuple(want[mismatch].shape)}, entry {shape}); use the "
                "entry's model config"
            )
        system.get_submodule(name).load_state_dict(have)
        loaded.append(name)
    manifest = read_manifest(entry_dir)
    return {
        "entry": f"{manifest.name}/{manifest.version}",
        "model_onnx_sha256": manifest.file_sha256(manifest.onnx_file),
        "parts": loaded,
    }


def _init_denoise_from_entry(system: DiRSystem, entry: Path) -> dict[str, Any]:
    """Load the full system from ``entry`` and, when the entry has a trained denoiser, continue it (the
    record then says ``denoiser_from: entry``) -> the provenance record."""
    record = init_from_entry(system, entry)
    if "alignment" not in record["parts"]:
        raise ConfigError(f"--init-from {entry}: the config's alignment network does not match the entry's")
    source = system_from_entry(entry)
    if not source.has_denoiser:
        return record
    # The entry's trained denoise parts continue (a detail gate only where both decode gated).
    for part in set(source.parts[len(VARIANT_PARTS["full"]) :]) & set(system.parts):
        system.get_submodule(part).load_state_dict(source.get_submodule(part).state_dict())
    return {**record, "denoiser_from": "entry"}


def _init_denoise_from_run(system: DiRSystem, run_dir: Path) -> dict[str, Any]:
    """Load the full system from the run's finished stage2.pt -> ``{"stage2_sha256": ...}``."""
    path = run_dir / checkpoint_name("stage2")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {path.name}: train stage2 first, or give --init-from ENTRY")
    ckpt = load_checkpoint(path)
    if ckpt["step"] < ckpt["steps"]:
        raise CheckpointError(f"stage2 in {run_dir} stopped at step {ckpt['step']}/{ckpt['steps']}")
    for name in VARIANT_PARTS["full"]:
        system.get_submodule(name).load_state_dict(ckpt["modules"][name])
    return {"stage2_sha256": sha256_file(path)}


def _init_denoise(system: DiRSystem, run_dir: Path, entry: Path | None) -> dict[str, Any]:
    """Load the full system of the denoise stage (from ``entry``, else the run's finished stage2.pt) and
    start its denoiser: from the entry's trained denoiser when it has one (its ``denoise.onnx`` came from
    ``dir-train denoise``: the stage continues it), else from DfRNet. Returns the provenance record kept in
    the checkpoint, ``denoiser_from`` naming the start ("entry" or "dfrnet")."""
    if entry is None:
        record = _init_denoise_from_run(system, run_dir)
    else:
        record = _init_denoise_from_entry(system, entry)
        if record.get("denoiser_from") == "entry":
            return record
    system.get_submodule("denoiser").load_state_dict(system.get_submodule("dfrnet").state_dict())
    return {**record, "denoiser_from": "dfrnet"}


Built = tuple[nn.Module, dict[str, Any] | None]


def _build_stage1(cfg: TrainConfig, variant: Variant | None, run_dir: Path, init_from: Path | None) -> Built:
    return Stage1Objective(cfg.model, cfg.loss), None


def _build_restoration(
    cfg: TrainConfig, variant: Variant | None, run_dir: Path, init_from: Path | None
) -> Built:
    assert variant is not None
    objective = RestorationObjective(cfg.model, cfg.loss, variant)
    if init_from is not None:
        return objective, init_from_entry(objective.system, init_from)
    _init_from_stage1(objective, run_dir)
    return objective, None


def _build_denoise(cfg: TrainConfig, variant: Variant | None, run_dir: Path, init_from: Path | None) -> Built:
    system = DiRSystem(cfg.model, "full", denoiser=True)
    initialised = _init_denoise(system, run_dir, init_from)
    return DenoiseObjective(system), initialised


def _two_view_losses(
    model: nn.Module, views: list[Tensor], clean: Tensor, step: int, cfg: TrainConfig
) -> Any:
    return model(*views, clean, prior_scale_at(step, cfg.loss))


def _one_view_losses(
    model: nn.Module, views: list[Tensor], clean: Tensor, step: int, cfg: TrainConfig
) -> Any:
    return model(*views, clean)


def _held_out_degraded(clean: Tensor, preset: str, names: list[str]) -> tuple[Tensor, Tensor]:
    return degrade_seeded(clean, preset, "held-out", names), clean


def _held_out_rendered(clean: Tensor, preset: str, names: list[str]) -> tuple[Tensor, Tensor]:
    # The denoise stage is scored against the noise-free renderings of the held-out inputs.
    return degrade_seeded_with_render(clean, preset, "held-out", names)


@dataclass(frozen=True)
class StageRecipe:
    """How one stage trains.

    ``config_key``: the :class:`TrainConfig` section holding its budget (steps, lr, grad clip).
    ``seed_index``: its term of the batch stream's base seed. ``views``/``target``: the batches it sees
    (:class:`training.train.data.StepBatches`). ``build``: (config, variant, run folder, init_from) ->
    (objective, provenance record kept in the checkpoint or None). ``losses``: one step's loss dict from the
    (possibly DDP-wrapped) objective, the batch's views and target, the step and the config.
    ``held_out``: (clean crops, preset, names) -> (input, reference) of the held-out PSNR, each
    (N, 3, H, W) float32 sRGB in [0, 1].
    """

    config_key: StageKey
    seed_index: int
    views: int
    target: Literal["clean", "render"]
    build: Callable[[TrainConfig, Variant | None, Path, Path | None], Built]
    losses: Callable[[nn.Module, list[Tensor], Tensor, int, TrainConfig], dict[str, Tensor]]
    held_out: Callable[[Tensor, str, list[str]], tuple[Tensor, Tensor]]

    def budget(self, cfg: TrainConfig) -> StageConfig:
        """The stage's section of ``cfg``."""
        section: StageConfig = getattr(cfg, self.config_key)
        return section

    def with_steps(self, cfg: TrainConfig, steps: int) -> TrainConfig:
        """``cfg`` with the stage's step count replaced by ``steps`` (the config is frozen: a new one)."""
        section = dataclasses.replace(self.budget(cfg), steps=steps)
        if self.config_key == "stage1":
            return dataclasses.replace(cfg, stage1=section)
        if self.config_key == "denoise":
            return dataclasses.replace(cfg, denoise=section)
        return dataclasses.replace(cfg, stage2=section)


RECIPES: dict[Stage, StageRecipe] = {
    "stage1": StageRecipe("stage1", 1, 2, "clean", _build_stage1, _two_view_losses, _held_out_degraded),
    "stage2": StageRecipe("stage2", 2, 1, "clean", _build_restoration, _one_view_losses, _held_out_degraded),
    "ablation": StageRecipe(
        "stage2", 3, 1, "clean", _build_restoration, _one_view_losses, _held_out_degraded
    ),
    "denoise": StageRecipe("denoise", 4, 1, "render", _build_denoise, _one_view_losses, _held_out_rendered),
}


def check_request(
    stage: Stage,
    variant: Variant | None,
    resume: bool,
    steps: int | None,
    time_limit_s: float | None,
    init_from: Path | None,
    world: int,
) -> Variant | None:
    """Refuse a request the stage cannot run (raises :class:`ConfigError`) -> the variant it trains
    (``full`` for stage2 and denoise, None for stage1)."""
    if time_limit_s is not None and (resume or time_limit_s <= 0):
        raise ConfigError(
            f"time limit {time_limit_s!r}: needs a positive number of seconds and a fresh run (not --resume)"
        )
    if time_limit_s is not None and world > 1:
        raise ConfigError("a time limit needs a single process; under torchrun give --steps instead")
    if steps is not None and steps <= 0:
        raise ConfigError(f"steps must be positive, got {steps}")
    if init_from is not None and (stage not in ("stage2", "denoise") or resume):
        raise ConfigError("--init-from starts a fresh stage2 or denoise (not stage1, ablation or --resume)")
    if stage == "ablation" and variant not in ABLATION_VARIANTS:
        raise ConfigError(f"ablation needs a variant among no_pilot, r0_only, autoencoder; got {variant!r}")
    if stage in ("stage2", "denoise"):
        variant = "full"
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}")
    return variant


def parts(objective: nn.Module) -> dict[str, nn.Module]:
    """The named networks of an objective, as its checkpoint stores them."""
    if isinstance(objective, RestorationObjective | DenoiseObjective):
        return {n: objective.system.get_submodule(n) for n in objective.system._modules}
    return dict(objective.named_children())
