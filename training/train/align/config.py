"""The typed config of ``dir-train align`` (Stage II with a task network in the loop, Eq. 8, gamma1 > 0).

``load_align_config("align-detect-cpu")`` reads ``training/configs/align-detect-cpu.yaml``; any other string
is a YAML path. The model comes from the ``--init-from`` entry, so a config holds data, loss weights and the
optimisation budget only. Unknown keys, wrong types and bad values raise :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import ConfigError
from training.isp.presets import PRESETS
from training.train.config import CONFIG_DIR, EVALUATION_SETS, StageConfig
from training.train.config import _from_dict as checked_dataclass

NAME_PREFIX = "align-detect"


@dataclass(frozen=True)
class AlignData:
    """Training batches: ``batch_size`` square crops of the clean images, each ``crop`` x ``crop`` px.

    ``images``: a dataset name under the shared data root (``coco128_train``) or a folder; the labels of an
    image ``.../images/<sub>/<stem>.jpg`` are ``.../labels/<sub>/<stem>.txt`` (the YOLO layout) unless
    ``--labels`` names their folder. A crop's side is drawn uniformly in [``min_scale``, 1] x the image's
    short side, then resized to ``crop`` (a multiple of 4); ``flip`` mirrors half of them, boxes with them.
    ``preset``: the ISP preset that degrades the clean crops (``default-isp``: the ``detect`` protocol's).
    """

    images: str = "coco128_train"
    crop: int = 256
    min_scale: float = 0.6
    batch_size: int = 4
    preset: str = "default-isp"
    flip: bool = True


@dataclass(frozen=True)
class AlignLoss:
    """Eq. 8 weights: L+ = |r+ - r*|_1 + gamma1 * L_task + gamma2 * |D*(r+) - y*|_1 (paper: 2 and 1).

    ``min_box_visible``: a box cut by the crop keeps training when at least this fraction of its area is
    inside the crop (else it is dropped)."""

    gamma1: float = 2.0
    gamma2: float = 1.0
    min_box_visible: float = 0.4


@dataclass(frozen=True)
class DetectorStage:
    """``--detector-mode joint``'s first stage (:mod:`training.train.align.detector_stage`): T alone on
    renderings of the training images through the entry's detection path, before A and T train together.

    ``optim.steps`` 0 skips it. ``draws``: degradations rendered per image (once, at the image's own
    size); ``batch_size`` crops per step; ``whole_image``: the fraction of crops that are the whole image,
    the rest a window of [``min_scale``, 1] x its height and width; ``labelled_weight``: weight of T's
    detection loss on labelled images beside the distillation (0: label-free)."""

    optim: StageConfig = field(
        default_factory=lambda: StageConfig(steps=0, lr=3e-5, lr_min=1e-6, warmup_steps=30, grad_clip=10.0)
    )
    batch_size: int = 16
    draws: int = 1
    whole_image: float = 0.3
    min_scale: float = 0.5
    labelled_weight: float = 0.0


@dataclass(frozen=True)
class AlignConfig:
    """A whole ``dir-train align`` run. ``optim``: Adam on A, warm-up then cosine (``lr_at``);
    ``detector_lr``: the detector's peak learning rate in the joint loop (same schedule shape);
    ``detector_stage``: joint mode's first stage, T alone (:class:`DetectorStage`). In joint mode either
    may have 0 steps, not both."""

    name: str = "align-detect"
    run_dir: str = "runs/align-detect"
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    data: AlignData = field(default_factory=AlignData)
    loss: AlignLoss = field(default_factory=AlignLoss)
    optim: StageConfig = field(default_factory=StageConfig)
    detector_lr: float = 1e-5
    detector_stage: DetectorStage = field(default_factory=DetectorStage)


def _validate(cfg: AlignConfig) -> None:
    stage = cfg.detector_stage
    positive = {
        "data.crop": cfg.data.crop,
        "data.batch_size": cfg.data.batch_size,
        "detector_stage.batch_size": stage.batch_size,
        "detector_stage.draws": stage.draws,
        "log_every": cfg.log_every,
        "ckpt_every": cfg.ckpt_every,
        "detector_lr": cfg.detector_lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if cfg.optim.steps < 0 or stage.optim.steps < 0 or cfg.optim.steps + stage.optim.steps == 0:
        raise ConfigError(
            f"optim.steps ({cfg.optim.steps}) and detector_stage.optim.steps ({stage.optim.steps}) must be "
            ">= 0, and not both 0"
        )
    if not 0.0 < stage.min_scale <= 1.0 or not 0.0 <= stage.whole_image <= 1.0 or stage.labelled_weight < 0:
        raise ConfigError(
            "detector_stage: need 0 < min_scale <= 1, 0 <= whole_image <= 1 and labelled_weight >= 0, got "
            f"{stage.min_scale}, {stage.whole_image}, {stage.labelled_weight}"
        )
    if cfg.data.crop % 4:
        raise ConfigError(f"data.crop must be a multiple of 4 (the latent stride), got {cfg.data.crop}")
    if not 0.0 < cfg.data.min_scale <= 1.0:
        raise ConfigError(f"data.min_scale must lie in (0, 1], got {cfg.data.min_scale}")
    if not 0.0 <= cfg.loss.min_box_visible <= 1.0:
        raise ConfigError(f"loss.min_box_visible must lie in [0, 1], got {cfg.loss.min_box_visible}")
    if cfg.loss.gamma1 < 0 or cfg.loss.gamma2 < 0:
        raise ConfigError(f"loss.gamma1 and gamma2 must be >= 0, got {cfg.loss.gamma1}, {cfg.loss.gamma2}")
    if cfg.data.preset not in PRESETS:
        raise ConfigError(f"data.preset {cfg.data.preset!r} is not an ISP preset: {sorted(PRESETS)}")
    if not 0 < cfg.optim.lr_min <= cfg.optim.lr or cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim: need 0 < lr_min <= lr and warmup_steps >= 0, got {cfg.optim}")
    if Path(cfg.data.images).name in EVALUATION_SETS:
        raise ConfigError(f"data.images {cfg.data.images!r} is an evaluation set; never train on it")


def align_config_from_dict(raw: dict[str, Any]) -> AlignConfig:
    """Validate a parsed YAML mapping into an :class:`AlignConfig` (raises :class:`ConfigError`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an align config must be a mapping at the top level, got {type(raw).__name__}")
    cfg = typing.cast(AlignConfig, checked_dataclass(AlignConfig, raw, "config"))
    _validate(cfg)
    return cfg


def load_align_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AlignConfig:
    """A named align config (``align-detect-cpu``, ``align-detect-gpu``) or a YAML path; ``overrides``
    replace top-level keys before validation."""
    p = Path(name_or_path)
    if not p.suffix and (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        named = sorted(f.stem for f in CONFIG_DIR.glob(f"{NAME_PREFIX}*.yaml"))
        raise ConfigError(f"align config {str(name_or_path)!r} is neither a file nor one of {named}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    return align_config_from_dict({**raw, **(overrides or {})})


def align_config_to_dict(cfg: AlignConfig) -> dict[str, Any]:
    """Plain-YAML form of a config, the inverse of :func:`align_config_from_dict`."""
    return dataclasses.asdict(cfg)
