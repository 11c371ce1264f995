"""Typed training configuration: dataclasses inside, YAML only as validated input.

``load_config("tiny")`` reads ``training/configs/tiny.yaml``; any other string is a path to a YAML file.
Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the offending key and value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import ConfigError
from training.isp.presets import PRESETS
from training.models.config import ModelConfig
from training.paths import dataset_dir
from training.train.data import preset_names

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Evaluation sets (DESIGN.md section 6 and the shared data folder): never a training folder.
EVALUATION_SETS = frozenset(
    {"cset14", "bsd100", "cbsd68", "cset5", "mcmaster", "cc15", "rni15", "curban100_first5", "coco128_val"}
)


@dataclass(frozen=True)
class DataConfig:
    """Where the clean training images come from and how batches are cut.

    ``train_dir``: a dataset name under the shared data root (``bsds500_train``) or a folder path; several
    joined by ``+`` (``bsds500_train+coco128_train``) train on all of them, held-out images from the first.
    The last ``val_images`` files (sorted by path) are held out for the PSNR measured during training.
    ``preset``: the ISP preset of the training batches, or a mixture ``"train+ablation"`` (each image's
    preset drawn uniformly from the names; repeat one to weight it). ``val_preset``: one preset for the
    held-out images. ``workers``: 0 builds each batch (ISP included) in the training process on the training
    device; N > 0 builds them on the CPU in N worker processes, in parallel with the training steps (for GPU
    runs, where the per-image ISP and JPEG work would otherwise stall the GPU).
    """

    train_dir: str = "bsds500_train"
    val_images: int = 4
    val_crop: int = 128
    patch_size: int = 96
    batch_size: int = 3
    preset: str = "train"
    val_preset: str = "ablation"
    workers: int = 0


@dataclass(frozen=True)
class StageConfig:
    """Optimisation budget of one stage: Adam, linear warm-up then cosine decay from ``lr`` to ``lr_min``."""

    steps: int = 100
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 10
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LossConfig:
    """Trade-off weights: Eq. 5 (lam, beta), Eq. 6 (beta_star, = 1 in the paper), Eq. 8 (gamma1, gamma2).

    ``gamma_fit`` (not in the paper, 0 = off): weight of Stage II's image L1 after a global affine colour fit
    to the clean image (``training.losses.stage2_loss``).

    ``kl_warmup_steps``: the prior weights beta and beta_star ramp linearly from 0 over this many Stage I
    steps (KL annealing), so the codes become informative before the prior shapes their aggregate.
    """

    lam: float = 1.0
    beta: float = 1.0
    beta_star: float = 1.0
    gamma1: float = 0.0
    gamma2: float = 1.0
    kl_warmup_steps: int = 0
    gamma_fit: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """A whole two-stage run. ``run_dir`` holds checkpoints, metrics logs and the config copy.

    ``denoise``: the budget of the optional ``dir-train denoise`` stage (the denoise mode's encoder).
    """

    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_threads: int = 0
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 200
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    denoise: StageConfig = field(default_factory=StageConfig)

    def data_paths(self) -> list[Path]:
        """The training folders of ``train_dir`` (``"a+b"`` names several), each a path if it names one,
        else a shared dataset name. The held-out images come from the first."""
        out = []
        for name in self.data.train_dir.split("+"):
            p = Path(name).expanduser()
            out.append(p if (p.is_absolute() or len(p.parts) > 1 or p.exists()) else dataset_dir(name))
        return out

    def data_path(self) -> Path:
        """The first training folder (:meth:`data_paths`), the one the held-out images come from."""
        return self.data_paths()[0]


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads exponent literals without a dot (1e-4) as strings.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got str {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int or tp is str or tp is bool:
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported union type {tp}")
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {names}")
    values = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    return cls(**values)


def _validate(cfg: TrainConfig) -> None:
    positive = {
        "data.patch_size": cfg.data.patch_size,
        "data.batch_size": cfg.data.batch_size,
        "data.val_crop": cfg.data.val_crop,
        "stage1.steps": cfg.stage1.steps,
        "stage2.steps": cfg.stage2.steps,
        "denoise.steps": cfg.denoise.steps,
        "log_every": cfg.log_every,
        "eval_every": cfg.eval_every,
        "ckpt_every": cfg.ckpt_every,
        "model.latent_channels": cfg.model.latent_channels,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key} must be > 0, got {v}")
    choices = {"model.align_arch": ("v1", "v2"), "model.denoise_decode": ("image", "gated")}
    for key, value in {
        "model.align_arch": cfg.model.align_arch,
        "model.denoise_decode": cfg.model.denoise_decode,
    }.items():
        if value not in choices[key]:
            raise ConfigError(f"{key} must be one of {choices[key]}, got {value!r}")
    if cfg.model.align_arch == "v2" and min(cfg.model.align_m1, cfg.model.align_m3) < 2:
        raise ConfigError(
            "model.align_arch v2 needs align_m1 and align_m3 >= 2 (two stages run in its context level)"
        )
    m = cfg.model.downsample
    for key, v in {"data.patch_size": cfg.data.patch_size, "data.val_crop": cfg.data.val_crop}.items():
        if v % m:
            raise ConfigError(f"{key} must be a multiple of {m}, got {v}")
    if cfg.loss.gamma_fit < 0:
        raise ConfigError(f"loss.gamma_fit must be >= 0, got {cfg.loss.gamma_fit}")
    if cfg.data.batch_size < 2:
        raise ConfigError(
            f"data.batch_size must be >= 2 (the MI bound needs shuffled negatives), got {cfg.data.batch_size}"
        )
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {cfg.data.workers}")
    if cfg.data.val_images < 0:
        raise ConfigError(f"data.val_images must be >= 0, got {cfg.data.val_images}")
    if cfg.model.gconv_kernel % 2 == 0:
        raise ConfigError(f"model.gconv_kernel must be odd, got {cfg.model.gconv_kernel}")
    for stage in ("stage1", "stage2", "denoise"):
        s: StageConfig = getattr(cfg, stage)
        if not 0 < s.lr_min <= s.lr:
            raise ConfigError(f"{stage}: need 0 < lr_min <= lr, got lr={s.lr} lr_min={s.lr_min}")
        if s.warmup_steps < 0:
            raise ConfigError(f"{stage}.warmup_steps must be >= 0, got {s.warmup_steps}")
    for key, preset in {"data.preset": cfg.data.preset, "data.val_preset": cfg.data.val_preset}.items():
        unknown = [n for n in preset_names(preset) if n not in PRESETS]
        if unknown or (key == "data.val_preset" and "+" in preset):
            raise ConfigError(
                f"{key} {preset!r}: unknown preset(s) {unknown}; valid presets: {sorted(PRESETS)}"
                + ("" if unknown else " (the held-out images use one preset, not a mixture)")
            )
    if any(p.name in EVALUATION_SETS for p in cfg.data_paths()):
        raise ConfigError(f"data.train_dir {cfg.data.train_dir!r} names an evaluation set; never train on it")


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Validate a parsed YAML mapping into a :class:`TrainConfig` (raises :class:`ConfigError`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    cfg = _from_dict(TrainConfig, raw, "config")
    _validate(cfg)
    return typing.cast(TrainConfig, cfg)


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a named config (``tiny``, ``paper``, ``default``) or a YAML path.

    ``overrides`` replace top-level keys before validation.
    """
    p = Path(name_or_path)
    if not p.suffix and (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        named = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor one of {named}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if overrides:
        raw = {**raw, **overrides}
    return config_from_dict(raw)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-YAML form of a config (tuples as lists), the inverse of :func:`config_from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(cfg)))
