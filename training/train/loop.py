"""The training loop every stage shares (its recipe in :mod:`training.train.stages` says what differs):
set-up, resume, time budget, DistributedDataParallel, logging and checkpoints."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from training.evaluate.metrics import psnr
from training.models import Variant, checkpoint_name, system_state
from training.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from training.train.config import TrainConfig, config_to_dict
from training.train.data import ImageStore, StepBatches, center_crops, iterate_batches, load_store
from training.train.objectives import DenoiseObjective, RestorationObjective
from training.train.runlog import append_record, metrics_path, truncate_log
from training.train.schedule import lr_at
from training.train.stages import RECIPES, Stage, StageRecipe, check_request, parts

# A time-budgeted stage measures its speed over steps PROBE_SKIP..PROBE_STEPS (the first ones include CUDA
# and allocator warm-up), then fixes its total step count so the rest fits the budget with BUDGET_MARGIN.
PROBE_SKIP = 10
PROBE_STEPS = 60
BUDGET_MARGIN = 0.92


def budget_steps(configured: int, done: int, rate: float, remaining_s: float) -> int:
    """Total steps of a time-budgeted stage: ``done`` plus what fits in ``remaining_s`` at ``rate`` steps/s.

    Keeps :data:`BUDGET_MARGIN` of the remaining time spare (evaluations, checkpoints, slower steps later),
    never exceeds ``configured`` and never goes below ``done``.
    """
    extra = int(max(remaining_s, 0.0) * rate * BUDGET_MARGIN)
    return max(done, min(configured, done + extra))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(objective: nn.Module, clean: Tensor, degraded: Tensor) -> dict[str, float]:
    """Held-out PSNR (dB): Stage I -> D*(DfR(y*)) reconstruction; restoration -> restored vs. input;
    denoise -> the denoise mode's output vs. ``clean``, there the noise-free rendering of ``degraded``."""
    was_training = objective.training
    objective.eval()
    if isinstance(objective, DenoiseObjective):
        out = {
            "val_psnr": fmean(psnr(objective.system.denoise(degraded), clean)),
            "val_input_psnr": fmean(psnr(degraded, clean)),
        }
    elif isinstance(objective, RestorationObjective):
        restored = objective.system(degraded)["restored"]
        out = {
            "val_psnr": fmean(psnr(restored, clean)),
            "val_input_psnr": fmean(psnr(degraded, clean)),
        }
    else:
        recon = objective.get_submodule("decoder")(objective.get_submodule("dfrnet")(clean)[0])
        out = {"val_recon_psnr": fmean(psnr(recon, clean))}
    objective.train(was_training)
    return out


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(cfg.device)
    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    return dist.get_rank(), world, device


@dataclass
class _Run:
    """One stage being trained: its recipe and (frozen) config, the objective and its optimiser, where it
    writes, and its held-out set (input, reference), each (N, 3, S, S) sRGB [0, 1] on the device, or None."""

    recipe: StageRecipe
    cfg: TrainConfig
    stage: Stage
    variant: Variant | None
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    initialised: dict[str, Any] | None
    run_dir: Path
    ckpt_path: Path
    log_path: Path
    rank: int
    held_out: tuple[Tensor, Tensor] | None = None

    @property
    def steps(self) -> int:
        """The stage's total step count."""
        return self.recipe.budget(self.cfg).steps

    def set_steps(self, n: int) -> None:
        """Replace the stage's total step count (the config is frozen: ``cfg`` becomes a new one)."""
        self.cfg = self.recipe.with_steps(self.cfg, n)

    def write_config(self) -> None:
        """``run_dir/config.yaml`` (rank 0 only)."""
        if self.rank == 0:
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
            )

    def resume(self, reset_steps: bool) -> int:
        """Load the stage's checkpoint bit for bit (with its step count unless ``reset_steps`` is False)
        -> the step it stopped at."""
        ckpt = load_checkpoint(self.ckpt_path)
        for name, module in parts(self.objective).items():
            module.load_state_dict(ckpt["modules"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt["rng"])
        self.initialised = ckpt.get("init_from")
        if reset_steps:
            self.set_steps(int(ckpt["steps"]))
        return int(ckpt["step"])

    def save(self, at: int) -> None:
        """Write the checkpoint of step ``at``."""
        payload: dict[str, Any] = {
            "stage": self.stage,
            "variant": self.variant,
            "model_config": asdict(self.cfg.model),
            "config": config_to_dict(self.cfg),
            "step": at,
            "steps": self.steps,
            "modules": {n: m.state_dict() for n, m in parts(self.objective).items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
        }
        if self.initialised is not None:
            payload["init_from"] = self.initialised
        if isinstance(self.objective, RestorationObjective | DenoiseObjective):
            payload.update(system_state(self.objective.system))
        save_checkpoint(self.ckpt_path, payload)

    def record(self, step: int, lr: float, losses: dict[str, Tensor], images_per_s: float) -> dict[str, Any]:
        """Append step ``step``'s log record (losses, lr, speed, held-out PSNR when due) -> the record."""
        record: dict[str, Any] = {k: round(float(v.detach()), 6) for k, v in losses.items()}
        record |= {"step": step, "lr": lr, "images_per_s": round(images_per_s, 2)}
        if self.held_out is not None and (step % self.cfg.eval_every == 0 or step == self.steps):
            degraded, reference = self.held_out
            record |= evaluate(self.objective, reference, degraded)
        append_record(self.log_path, record)
        return record


def _held_out(run: _Run, store: ImageStore, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """The held-out (input, reference) of the run's recipe, or None without held-out images."""
    names = [p.name for p in store.val_files]
    if not names:
        return None
    clean = center_crops(store.val, run.cfg.data.val_crop).to(device)
    return run.recipe.held_out(clean, run.cfg.data.val_preset, names)


def _batches(
    recipe: StageRecipe, store: ImageStore, cfg: TrainConfig, rank: int, device: torch.device
) -> StepBatches:
    """The stage's step-indexed batch stream (built on the CPU when worker processes build it)."""
    return StepBatches(
        store.train,
        cfg.data.batch_size,
        cfg.data.patch_size,
        cfg.data.preset,
        views=recipe.views,
        base_seed=1_000_003 * cfg.seed + 101 * recipe.seed_index + rank,
        device=device if cfg.data.workers == 0 else torch.device("cpu"),
        target=recipe.target,
    )


def _parallel(objective: nn.Module, world: int, device: torch.device) -> nn.Module:
    """``objective`` wrapped in DistributedDataParallel under torchrun (WORLD_SIZE > 1), else itself."""
    if world == 1:
        return objective
    return nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None
    )


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _optimise(
    run: _Run,
    model: nn.Module,
    stream: Any,
    step: int,
    stop_at: int | None,
    time_limit_s: float | None,
    world: int,
    bar: tqdm,
    device: torch.device,
) -> None:
    """Steps ``step`` .. the stage's end (or ``stop_at``): optimise, fit a time budget, log, checkpoint."""
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    clip = run.recipe.budget(run.cfg).grad_clip
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.cfg.amp and device.type == "cuda")
    last = run.steps if stop_at is None else min(stop_at, run.steps)
    tick, seen = time.perf_counter(), 0
    loop_start, probe_start = tick, tick
    while step < last:
        lr = lr_at(step, run.recipe.budget(run.cfg))
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        clean, *views = next(stream)
        with amp:
            losses = run.recipe.losses(model, views, clean, step, run.cfg)
        run.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(params, clip)
        run.optimizer.step()
        step += 1
        seen += clean.shape[0] * world
        bar.update(1)
        if time_limit_s is not None and step == PROBE_SKIP:
            probe_start = _sync_time(device)
        elif time_limit_s is not None and step == PROBE_STEPS:
            now = _sync_time(device)
            rate = (PROBE_STEPS - PROBE_SKIP) / max(now - probe_start, 1e-9)
            run.set_steps(budget_steps(run.steps, step, rate, time_limit_s - (now - loop_start)))
            last = run.steps if stop_at is None else min(stop_at, run.steps)
            bar.total = run.steps
            run.write_config()
        if run.rank != 0:
            continue
        if step % run.cfg.log_every == 0 or step == last:
            now = time.perf_counter()
            record = run.record(step, lr, losses, seen / max(now - tick, 1e-9))
            tick, seen = now, 0
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "lr")}, refresh=False
            )
        if step % run.cfg.ckpt_every == 0 or step == last:
            run.save(step)


def train_stage(
    cfg: TrainConfig,
    stage: Stage,
    variant: Variant | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    steps: int | None = None,
    time_limit_s: float | None = None,
    init_from: Path | None = None,
) -> Path:
    """Train one stage -> its checkpoint path (``ablation`` needs a variant: no_pilot, r0_only, autoencoder).

    Writes ``run_dir/<stage>.pt`` (``ablation-<variant>.pt``) and ``metrics-<tag>.jsonl``. ``resume``
    continues from that checkpoint bit for bit, with the step count the checkpoint was started with;
    ``stop_at`` ends (with a checkpoint) after that many steps. ``steps`` replaces the config's step count of
    the stage. ``time_limit_s`` fits the stage into that many seconds of optimisation (start-up not counted):
    after :data:`PROBE_STEPS` steps it measures its speed and sets the total step count (at most the
    configured one) with :func:`budget_steps`; the learning-rate schedule then spans the chosen count, and the
    checkpoint and ``config.yaml`` record it. Under ``torchrun`` (WORLD_SIZE > 1) the objective is wrapped in
    DistributedDataParallel and rank 0 writes; a time budget is refused there (each rank would choose its
    own step count, and ranks that stop at different steps hang). ``init_from`` (stage2 and denoise, not with
    ``resume``): a model_store entry to start from instead of ``stage1.pt``
    (:func:`training.train.stages.init_from_entry`), or for ``denoise`` instead of the run's ``stage2.pt``.
    ``denoise`` (not in the paper) trains the full system's denoiser on the noise-free renderings of its
    batches (:class:`DenoiseObjective`) and writes ``denoise.pt``, the whole full system plus the denoiser;
    its budget is the config's ``denoise`` section.
    """
    recipe = RECIPES[stage]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    variant = check_request(stage, variant, resume, steps, time_limit_s, init_from, world)
    store = load_store(cfg.data_paths(), cfg.data.val_images, max(cfg.data.patch_size, cfg.data.val_crop))
    rank, world, device = _setup_distributed(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = stage if variant in (None, "full") else f"{stage}-{variant}"
    if steps is not None:
        cfg = recipe.with_steps(cfg, steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed + rank)
    objective, initialised = recipe.build(cfg, variant, run_dir, init_from)
    objective.to(device).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=recipe.budget(cfg).lr)
    run = _Run(
        recipe=recipe,
        cfg=cfg,
        stage=stage,
        variant=variant,
        objective=objective,
        optimizer=optimizer,
        initialised=initialised,
        run_dir=run_dir,
        ckpt_path=run_dir / checkpoint_name(stage, variant),
        log_path=metrics_path(run_dir, tag),
        rank=rank,
    )
    batches = _batches(recipe, store, cfg, rank, device)
    step = run.resume(reset_steps=steps is None) if resume else 0
    if rank == 0 and resume:
        truncate_log(run.log_path, step)
    elif rank == 0:
        run.log_path.unlink(missing_ok=True)
    run.write_config()
    run.held_out = _held_out(run, store, device)
    bar = tqdm(total=run.steps, initial=step, desc=tag, disable=not progress or rank != 0, dynamic_ncols=True)
    stream = iterate_batches(batches, step, cfg.data.workers, device)
    _optimise(
        run, _parallel(objective, world, device), stream, step, stop_at, time_limit_s, world, bar, device
    )
    bar.close()
    stream.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.ckpt_path
