"""``dir-train align``'s run: set-up, resume, time budget, logging, checkpoints, and the entries it writes.

The run folder holds ``align.pt`` (A, the detector in joint mode, optimiser, RNG, step, the request and the
config), ``metrics-align.jsonl``, ``config.yaml`` and ``loss_curves.png``. Batches depend on the step index
only (:func:`training.train.align.data.step_batch`), so ``--resume`` continues the same run.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from modelstore.manifest import sha256_file
from training.errors import CheckpointError, ConfigError, DataError
from training.models.checkpoint import system_from_entry
from training.train.align.config import AlignConfig, align_config_from_dict, align_config_to_dict
from training.train.align.data import LabelledSet, load_labelled, resolve_images, step_batch
from training.train.align.detector import TorchDetector, load_torch_detector, resolve_detector
from training.train.align.detector_stage import render_set, stage_step
from training.train.align.entry import (
    check_destination,
    check_uncommittable,
    default_destination,
    parity_batches,
    write_aligned_entry,
    write_detector_entry,
)
from training.train.align.objective import LABELLED_LOSSES, LOSSES, AlignObjective, TaskLoss, task_loss
from training.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from training.train.config import EVALUATION_SETS
from training.train.loop import PROBE_SKIP, PROBE_STEPS, budget_steps, resolve_device
from training.train.runlog import append_record, metrics_path, plot_run, truncate_log
from training.train.schedule import lr_at

CHECKPOINT = "align.pt"
TAG = "align"
#: The log tag (``metrics-detector.jsonl``) of joint mode's first stage, T alone.
DETECTOR_TAG = "detector"
MODES = ("frozen", "joint")


@dataclass(frozen=True)
class AlignRequest:
    """What to align for. ``detector``: ``NAME[@VERSION]`` under ``store`` or an entry folder;
    ``init_from``: the dir-restore entry whose DiRNet, DfRNet, D* (frozen) and A (trained) start the run;
    ``to``: the aligned entry's folder (default ``store/dir-align-<detector>/1``); ``images``: clean image
    folders or dataset names replacing the config's; ``labels``: their YOLO labels folder."""

    detector: str
    init_from: str
    to: str | None = None
    store: str = "model_store"
    mode: str = "frozen"
    loss: str = "distill"
    images: tuple[str, ...] = ()
    labels: str | None = None
    detector_weights: str | None = None

    def check(self) -> None:
        """Raise :class:`ConfigError` for a mode or loss that does not exist."""
        if self.mode not in MODES:
            raise ConfigError(f"--detector-mode {self.mode!r}: choose one of {MODES}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss!r}: choose one of {LOSSES}")


@dataclass(frozen=True)
class AlignResult:
    """The run's checkpoint, and the entries written when it finished (None after ``stop_at``)."""

    checkpoint: Path
    step: int
    steps: int
    entry: Path | None = None
    detector_entry: Path | None = None


def saved_run(run_dir: Path) -> tuple[AlignConfig, AlignRequest]:
    """The config and request of the run in ``run_dir`` (from its ``align.pt``), for ``--resume``."""
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    raw = dict(ckpt["request"])
    request = AlignRequest(**{**raw, "images": tuple(raw.get("images", ()))})
    return align_config_from_dict(ckpt["config"]), request


def _load_data(cfg: AlignConfig, request: AlignRequest) -> LabelledSet:
    folders = [resolve_images(n) for n in (request.images or (cfg.data.images,))]
    for folder in folders:
        if any(part in EVALUATION_SETS for part in folder.parts):
            raise ConfigError(f"{folder} lies in an evaluation set; never train on it")
    data = load_labelled(folders, Path(request.labels) if request.labels else None)
    if request.loss in LABELLED_LOSSES and not data.labelled:
        raise DataError(
            f"--loss {request.loss} needs YOLO labels, but no label file was found for the images in "
            f"{', '.join(map(str, folders))}; give --labels DIR or use --loss distill"
        )
    return data


def _check_detector(request: AlignRequest, det: TorchDetector) -> None:
    if not det.is_yolo_fastestv2 and (request.mode == "joint" or request.loss in LABELLED_LOSSES):
        raise ConfigError(
            f"{det.ref} was converted from ONNX: --detector-mode joint and --loss detect|both need a "
            "Yolo-FastestV2 entry (raw head outputs, installable again); use --detector-mode frozen "
            "--loss distill"
        )


@dataclass
class _Run:
    """A run being trained: objective, optimiser, where it writes, and its progress."""

    cfg: AlignConfig
    request: AlignRequest
    objective: AlignObjective
    optimizer: torch.optim.Optimizer
    run_dir: Path
    destination: Path
    steps: int
    #: Joint mode's first stage: T's own optimiser and the steps it has trained (of ``detector_steps``).
    detector_optimizer: torch.optim.Optimizer | None = None
    detector_step: int = 0

    @property
    def detector_steps(self) -> int:
        """The detector stage's step count (0 in frozen mode)."""
        return self.cfg.detector_stage.optim.steps if self.objective.joint else 0

    @property
    def ckpt_path(self) -> Path:
        """``run_dir/align.pt``."""
        return self.run_dir / CHECKPOINT

    def set_lr(self, step: int) -> float:
        """The schedule's lr at ``step`` for A; the detector's group scaled by ``detector_lr / lr``."""
        lr = lr_at(step, dataclasses.replace(self.cfg.optim, steps=self.steps))
        for group in self.optimizer.param_groups:
            scale = self.cfg.detector_lr / self.cfg.optim.lr if group["name"] == "detector" else 1.0
            group["lr"] = lr * scale
        return lr

    def modules(self) -> dict[str, torch.nn.Module]:
        """The trained networks the checkpoint keeps: ``alignment``, and ``detector`` when joint."""
        out = {"alignment": self.objective.system.get_submodule("alignment")}
        if self.objective.joint:
            out["detector"] = self.objective.detector
        return out

    def save(self, step: int) -> None:
        """Write ``align.pt`` of step ``step`` and ``config.yaml`` (with the run's step count)."""
        config = align_config_to_dict(self.cfg)
        save_checkpoint(
            self.ckpt_path,
            {
                "stage": TAG,
                "step": step,
                "steps": self.steps,
                "config": config,
                "request": dataclasses.asdict(self.request) | {"images": list(self.request.images)},
                "modules": {n: m.state_dict() for n, m in self.modules().items()},
                "optimizer": self.optimizer.state_dict(),
                "detector_step": self.detector_step,
                "detector_optimizer": self.detector_optimizer.state_dict()
                if self.detector_optimizer
                else None,
                "rng": rng_state(),
            },
        )
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump({**config, "optim": {**config["optim"], "steps": self.steps}}, sort_keys=False)
        )

    def resume(self) -> int:
        """Load ``align.pt`` (weights, optimiser, RNG, step count) -> the step it stopped at."""
        ckpt = load_checkpoint(self.ckpt_path)
        for name, module in self.modules().items():
            if name not in ckpt["modules"]:
                raise CheckpointError(f"{self.ckpt_path} has no {name} (trained in another detector mode)")
            module.load_state_dict(ckpt["modules"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.detector_step = int(ckpt.get("detector_step", 0))
        if self.detector_optimizer is not None and ckpt.get("detector_optimizer"):
            self.detector_optimizer.load_state_dict(ckpt["detector_optimizer"])
        restore_rng(ckpt["rng"])
        self.steps = int(ckpt["steps"])
        return int(ckpt["step"])


def _build(
    cfg: AlignConfig, request: AlignRequest, task: TaskLoss | None, device: torch.device
) -> tuple[AlignObjective, TorchDetector]:
    """The objective on ``device``: the init entry's system, the detector, the task loss."""
    det = load_torch_detector(
        resolve_detector(Path(request.store), request.detector),
        Path(request.detector_weights) if request.detector_weights else None,
        trainable=request.mode == "joint",
    )
    _check_detector(request, det)
    layout = None if det.is_yolo_fastestv2 else str(det.manifest.extra["output_layout"])
    size = int(det.manifest.extra["input_size"])
    chosen = task if task is not None else task_loss(request.loss, layout, size)
    system = system_from_entry(Path(request.init_from))
    objective = AlignObjective(system, det.module, det.manifest, chosen, cfg.loss, request.mode == "joint")
    return objective.to(device).train(), det


def _optimizer(objective: AlignObjective, cfg: AlignConfig) -> torch.optim.Optimizer:
    groups = [{"params": p, "name": n, "lr": cfg.optim.lr} for n, p in objective.trainable().items()]
    return torch.optim.Adam(groups, lr=cfg.optim.lr)


def _optimise(
    run: _Run,
    data: LabelledSet,
    step: int,
    stop_at: int | None,
    time_limit_s: float | None,
    bar: tqdm,
    device: torch.device,
) -> int:
    """Steps ``step`` .. the run's end (``stop_at``, or the time limit): optimise, log, checkpoint -> the
    step reached. A time limit fixes the step count from the speed over this session's steps
    ``PROBE_SKIP .. PROBE_STEPS`` (as every dir-train stage) and stops with a checkpoint when reached.
    Each log record holds the loss terms averaged over the steps since the previous record."""
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    log_path = metrics_path(run.run_dir, TAG)
    start = tick = probe = time.perf_counter()
    first, seen = step, 0
    sums: dict[str, float] = {}
    while step < (last := run.steps if stop_at is None else min(stop_at, run.steps)):
        lr = run.set_lr(step)
        clean, degraded, targets = step_batch(
            data, run.cfg.data, run.cfg.loss.min_box_visible, run.cfg.seed, step, device
        )
        losses = run.objective(degraded, clean, targets)
        run.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip)
        run.optimizer.step()
        step, seen = step + 1, seen + clean.shape[0]
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.update(1)
        now = time.perf_counter()
        if time_limit_s is not None and step - first == PROBE_SKIP:
            probe = now
        elif time_limit_s is not None and step - first == PROBE_STEPS:
            rate = (PROBE_STEPS - PROBE_SKIP) / max(now - probe, 1e-9)
            run.steps = budget_steps(run.steps, step, rate, time_limit_s - (now - start))
            bar.total = run.steps
        out_of_time = time_limit_s is not None and now - start >= time_limit_s
        if step % run.cfg.log_every == 0 or step == run.steps or out_of_time:
            batches = seen / clean.shape[0]
            record = {k: round(v / batches, 6) for k, v in sums.items()}
            record |= {"step": step, "lr": lr, "images_per_s": round(seen / max(now - tick, 1e-9), 3)}
            append_record(log_path, record)
            tick, seen, sums = now, 0, {}
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "latent_l1", "image_l1", "task")})
        if step % run.cfg.ckpt_every == 0 or step in (last, run.steps) or out_of_time:
            run.save(step)
        if out_of_time:
            break
    return step


def _train_detector_stage(
    run: _Run, data: LabelledSet, det: TorchDetector, end: int, time_limit_s: float | None, progress: bool
) -> float:
    """Joint mode's first stage from ``run.detector_step`` to step ``end`` or the time limit: render the
    training set through the entry's detection path (A as it starts), then fine-tune T on it, logging to
    ``metrics-detector.jsonl`` and checkpointing as the joint loop does -> the seconds it took."""
    stage = run.cfg.detector_stage
    start = time.perf_counter()
    system = run.objective.system
    device = next(system.parameters()).device
    run.objective.eval()
    renderings = render_set(
        data, lambda x: system.restore(x.to(device)), run.cfg.data.preset, stage.draws, run.cfg.seed, progress
    )
    run.objective.train()
    assert run.detector_optimizer is not None
    log_path = metrics_path(run.run_dir, DETECTOR_TAG)
    bar = tqdm(total=stage.optim.steps, initial=run.detector_step, desc=DETECTOR_TAG, disable=not progress)
    tick, seen = time.perf_counter(), 0
    sums: dict[str, float] = {}
    while run.detector_step < end:
        terms = stage_step(
            run.objective.detector,
            run.objective.teacher,
            run.detector_optimizer,
            renderings,
            data,
            stage,
            det.manifest,
            run.cfg.seed + 1,
            run.detector_step,
        )
        lr = terms.pop("lr")
        run.detector_step, seen = run.detector_step + 1, seen + 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.update(1)
        now = time.perf_counter()
        out_of_time = time_limit_s is not None and now - start >= time_limit_s
        done = run.detector_step == end
        if run.detector_step % run.cfg.log_every == 0 or done or out_of_time:
            record = {k: round(v / seen, 6) for k, v in sums.items()}
            images_per_s = round(seen * stage.batch_size / max(now - tick, 1e-9), 3)
            append_record(
                log_path, record | {"step": run.detector_step, "lr": lr, "images_per_s": images_per_s}
            )
            tick, sums, seen = now, {}, 0
            bar.set_postfix({"loss": f"{record['loss']:.4g}"})
        if run.detector_step % run.cfg.ckpt_every == 0 or done or out_of_time:
            run.save(0)
        if out_of_time:
            break
    bar.close()
    return time.perf_counter() - start


def train_align(
    cfg: AlignConfig,
    request: AlignRequest,
    *,
    resume: bool = False,
    steps: int | None = None,
    time_limit_s: float | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    force: bool = False,
    task: TaskLoss | None = None,
) -> AlignResult:
    """Train A (and T in joint mode) with the detector in the loop, then write the aligned entry.

    Joint mode first runs ``cfg.detector_stage`` (T alone on renderings of the training set, see
    :mod:`training.train.align.detector_stage`), then the joint loop (A and T on Eq. 8).
    ``resume`` continues ``cfg.run_dir``'s ``align.pt`` with its step counts; ``steps`` replaces the joint
    loop's; ``time_limit_s`` fits the run into that many seconds (the detector stage's time counts; it stops
    with a checkpoint when out of time); ``stop_at`` ends with a checkpoint after that many steps (the
    detector stage's first) and writes no entry. ``task`` replaces the ``--loss`` task loss (for
    tests). Raises :class:`ConfigError` / :class:`DataError` / :class:`CheckpointError` on bad input.
    """
    request.check()
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    objective, det = _build(cfg, request, task, device)
    destination = Path(request.to) if request.to else default_destination(Path(request.store), det)
    check_uncommittable(destination, det)
    check_destination(destination, force or resume)
    data = _load_data(cfg, request)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps_total = steps if steps is not None else cfg.optim.steps
    run = _Run(cfg, request, objective, _optimizer(objective, cfg), run_dir, destination, steps_total)
    if objective.joint:
        run.detector_optimizer = torch.optim.Adam(
            objective.detector.parameters(), lr=cfg.detector_stage.optim.lr
        )
    _check_steps(run)
    step = run.resume() if resume else 0
    if resume:
        truncate_log(metrics_path(run_dir, TAG), step)
        truncate_log(metrics_path(run_dir, DETECTOR_TAG), run.detector_step)
    else:
        metrics_path(run_dir, TAG).unlink(missing_ok=True)
        metrics_path(run_dir, DETECTOR_TAG).unlink(missing_ok=True)
    stage_end = run.detector_steps if stop_at is None else min(stop_at, run.detector_steps)
    if run.detector_step < stage_end:
        spent = _train_detector_stage(run, data, det, stage_end, time_limit_s, progress)
        time_limit_s = None if time_limit_s is None else time_limit_s - spent
    joint_stop = None if stop_at is None else max(0, stop_at - run.detector_steps)
    stage_done = run.detector_step == run.detector_steps
    if stage_done and step < run.steps and (time_limit_s is None or time_limit_s > 0):
        bar = tqdm(total=run.steps, initial=step, desc=TAG, disable=not progress, dynamic_ncols=True)
        step = _optimise(run, data, step, joint_stop, time_limit_s, bar, device)
        bar.close()
    if step + run.detector_step == 0:
        raise CheckpointError(f"{run.ckpt_path}: no step trained (stop-at {stop_at})")
    plot_run(run_dir)
    if run.detector_step < run.detector_steps or step < run.steps:
        return AlignResult(run.ckpt_path, step, run.steps)
    return _finish(run, det, data, step)


def _check_steps(run: _Run) -> None:
    """Frozen mode trains A only: refuse a detector stage there, and a run with nothing to train."""
    stage = run.cfg.detector_stage.optim.steps
    if not run.objective.joint and stage:
        raise ConfigError(
            f"detector_stage.optim.steps is {stage}, but the detector stage trains T: use --detector-mode "
            "joint, or set it to 0"
        )
    if run.steps + run.detector_steps == 0:
        raise ConfigError("nothing to train: optim.steps (or --steps) is 0 and there is no detector stage")


def _finish(run: _Run, det: TorchDetector, data: LabelledSet, step: int) -> AlignResult:
    """Write the aligned entry (and the joint detector entry) of a run that reached ``step``."""
    request = run.request
    detector_entry = None
    if request.mode == "joint":
        weights = run.run_dir / "detector.pt"
        torch.save({k: v.cpu() for k, v in run.objective.detector.state_dict().items()}, weights)
        detector_entry = write_detector_entry(det, weights, run.destination)
    aligned_for: dict[str, Any] = {
        "task": "detect",
        "detector": det.ref,
        "detector_mode": request.mode,
        "loss": request.loss,
        "detector_entry": f"{detector_entry.parent.name}@{detector_entry.name}"
        if detector_entry
        else det.ref,
        "local_only": det.local_only,
        "commit": not det.local_only,
        "gamma1": run.cfg.loss.gamma1,
        "gamma2": run.cfg.loss.gamma2,
    }
    provenance = {
        "run": str(run.run_dir),
        "step": step,
        "steps": run.steps,
        "checkpoint_sha256": sha256_file(run.ckpt_path),
        "config": align_config_to_dict(run.cfg),
        "detector_source": det.source,
        "images": [str(p) for p in dict.fromkeys(f.parent for f in data.files)],
    }
    system = run.objective.system.cpu()
    if run.destination.exists():
        shutil.rmtree(run.destination)
    write_aligned_entry(
        system,
        run.destination,
        Path(request.init_from),
        parity_batches(data, run.cfg.data.preset),
        aligned_for,
        provenance,
    )
    return AlignResult(run.ckpt_path, step, run.steps, run.destination, detector_entry)
