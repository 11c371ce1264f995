"""The flat training loop shared by Stage I, Stage II and the ablations (one function, top to bottom)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from training.data import degrade_seeded, degrade_seeded_with_render
from training.errors import CheckpointError, ConfigError
from training.evaluate.metrics import psnr
from training.models import VARIANT_PARTS, VARIANTS, DiRSystem, Variant, checkpoint_name, system_state
from training.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from training.train.config import StageConfig, TrainConfig, config_to_dict
from training.train.data import StepBatches, center_crops, iterate_batches, load_store
from training.train.objectives import DenoiseObjective, RestorationObjective, Stage1Objective
from training.train.runlog import append_record, metrics_path, truncate_log
from training.train.schedule import lr_at, prior_scale_at

Stage = Literal["stage1", "stage2", "ablation", "denoise"]
# Stage I networks that the restoration variants start from (frozen or not, see RestorationObjective).
STAGE1_PARTS: dict[Variant, tuple[str, ...]] = {
    "full": ("dirnet", "dfrnet", "decoder"),
    "no_pilot": ("dirnet", "dfrnet", "decoder"),
    "r0_only": ("dirnet",),
    "autoencoder": (),
}


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


def _parts(objective: nn.Module) -> dict[str, nn.Module]:
    if isinstance(objective, RestorationObjective | DenoiseObjective):
        return {n: objective.system.get_submodule(n) for n in objective.system._modules}
    return dict(objective.named_children())


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
    from service.manifest import read_manifest
    from training.export.recover import system_from_entry

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


def _init_denoise(system: DiRSystem, run_dir: Path, entry: Path | None) -> dict[str, Any]:
    """Load the full system of the denoise stage (from ``entry``, else the run's finished stage2.pt) and
    start its denoiser: from the entry's trained denoiser when it has one (its ``denoise.onnx`` came from
    ``dir-train denoise``: the stage continues it), else from DfRNet. Returns the provenance record kept in
    the checkpoint, ``denoiser_from`` naming the start ("entry" or "dfrnet")."""
    if entry is not None:
        from training.export.recover import system_from_entry

        record = init_from_entry(system, entry)
        if "alignment" not in record["parts"]:
            raise ConfigError(
                f"--init-from {entry}: the config's alignment network does not match the entry's"
            )
        source = system_from_entry(entry)
        if source.has_denoiser:
            # The entry's trained denoise parts continue (a detail gate only where both decode gated).
            for part in set(source.parts[len(VARIANT_PARTS["full"]) :]) & set(system.parts):
                system.get_submodule(part).load_state_dict(source.get_submodule(part).state_dict())
            return {**record, "denoiser_from": "entry"}
    else:
        from service.manifest import sha256_file

        path = run_dir / checkpoint_name("stage2")
        if not path.is_file():
            raise CheckpointError(
                f"{run_dir} has no {path.name}: train stage2 first, or give --init-from ENTRY"
            )
        ckpt = load_checkpoint(path)
        if ckpt["step"] < ckpt["steps"]:
            raise CheckpointError(f"stage2 in {run_dir} stopped at step {ckpt['step']}/{ckpt['steps']}")
        for name in VARIANT_PARTS["full"]:
            system.get_submodule(name).load_state_dict(ckpt["modules"][name])
        record = {"stage2_sha256": sha256_file(path)}
    system.get_submodule("denoiser").load_state_dict(system.get_submodule("dfrnet").state_dict())
    return {**record, "denoiser_from": "dfrnet"}


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
    import torch.distributed as dist

    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    return dist.get_rank(), world, device


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
    ``resume``): a model_store entry to start from instead of ``stage1.pt`` (:func:`init_from_entry`), or
    for ``denoise`` instead of the run's ``stage2.pt``. ``denoise`` (not in the paper) trains the full
    system's denoiser on the noise-free renderings of its batches (:class:`DenoiseObjective`) and writes
    ``denoise.pt``, the whole full system plus the denoiser; its budget is the config's ``denoise`` section.
    """
    if time_limit_s is not None and (resume or time_limit_s <= 0):
        raise ConfigError(
            f"time limit {time_limit_s!r}: needs a positive number of seconds and a fresh run (not --resume)"
        )
    if time_limit_s is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a time limit needs a single process; under torchrun give --steps instead")
    if steps is not None and steps <= 0:
        raise ConfigError(f"steps must be positive, got {steps}")
    if init_from is not None and (stage not in ("stage2", "denoise") or resume):
        raise ConfigError("--init-from starts a fresh stage2 or denoise (not stage1, ablation or --resume)")
    if stage == "ablation" and variant not in ("no_pilot", "r0_only", "autoencoder"):
        raise ConfigError(f"ablation needs a variant among no_pilot, r0_only, autoencoder; got {variant!r}")
    if stage in ("stage2", "denoise"):
        variant = "full"
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}")
    store = load_store(cfg.data_paths(), cfg.data.val_images, max(cfg.data.patch_size, cfg.data.val_crop))
    rank, world, device = _setup_distributed(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = stage if variant in (None, "full") else f"{stage}-{variant}"
    ckpt_path = run_dir / checkpoint_name(stage, variant)
    log_path = metrics_path(run_dir, tag)

    stage_key = {"stage1": "stage1", "denoise": "denoise"}.get(stage, "stage2")
    stage_cfg: StageConfig = getattr(cfg, stage_key)

    def set_steps(n: int) -> None:
        nonlocal cfg, stage_cfg
        stage_cfg = dataclasses.replace(stage_cfg, steps=n)
        if stage_key == "stage1":
            cfg = dataclasses.replace(cfg, stage1=stage_cfg)
        elif stage_key == "denoise":
            cfg = dataclasses.replace(cfg, denoise=stage_cfg)
        else:
            cfg = dataclasses.replace(cfg, stage2=stage_cfg)

    if steps is not None:
        set_steps(steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed + rank)
    objective: nn.Module
    initialised: dict[str, Any] | None = None
    if stage == "stage1":
        objective = Stage1Objective(cfg.model, cfg.loss)
    elif stage == "denoise":
        system = DiRSystem(cfg.model, "full", denoiser=True)
        initialised = _init_denoise(system, run_dir, init_from)
        objective = DenoiseObjective(system)
    else:
        assert variant is not None
        objective = RestorationObjective(cfg.model, cfg.loss, variant)
        if init_from is not None:
            initialised = init_from_entry(objective.system, init_from)
        else:
            _init_from_stage1(objective, run_dir)
    objective.to(device).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=stage_cfg.lr)

    stage_index = {"stage1": 1, "stage2": 2, "ablation": 3, "denoise": 4}[stage]
    batches = StepBatches(
        store.train,
        cfg.data.batch_size,
        cfg.data.patch_size,
        cfg.data.preset,
        views=2 if stage == "stage1" else 1,
        base_seed=1_000_003 * cfg.seed + 101 * stage_index + rank,
        device=device if cfg.data.workers == 0 else torch.device("cpu"),
        target="render" if stage == "denoise" else "clean",
    )
    step = 0
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        for name, module in _parts(objective).items():
            module.load_state_dict(ckpt["modules"][name])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt["rng"])
        step = int(ckpt["step"])
        initialised = ckpt.get("init_from")
        if steps is None:
            set_steps(int(ckpt["steps"]))
        if rank == 0:
            truncate_log(log_path, step)
    elif rank == 0:
        log_path.unlink(missing_ok=True)

    def write_config() -> None:
        if rank == 0:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    write_config()

    val_names = [p.name for p in store.val_files]
    val_clean = center_crops(store.val, cfg.data.val_crop).to(device) if val_names else None
    val_x: Tensor | None = None
    if val_clean is not None and stage == "denoise":
        # The denoise stage is scored against the noise-free renderings of the held-out inputs.
        val_x, val_clean = degrade_seeded_with_render(val_clean, cfg.data.val_preset, "held-out", val_names)
    elif val_clean is not None:
        val_x = degrade_seeded(val_clean, cfg.data.val_preset, "held-out", val_names)
    model: nn.Module = objective
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save(at: int) -> None:
        payload: dict[str, Any] = {
            "stage": stage,
            "variant": variant,
            "model_config": asdict(cfg.model),
            "config": config_to_dict(cfg),
            "step": at,
            "steps": stage_cfg.steps,
            "modules": {n: m.state_dict() for n, m in _parts(objective).items()},
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
        }
        if initialised is not None:
            payload["init_from"] = initialised
        if isinstance(objective, RestorationObjective | DenoiseObjective):
            payload.update(system_state(objective.system))
        save_checkpoint(ckpt_path, payload)

    last = stage_cfg.steps if stop_at is None else min(stop_at, stage_cfg.steps)
    bar = tqdm(
        total=stage_cfg.steps, initial=step, desc=tag, disable=not progress or rank != 0, dynamic_ncols=True
    )
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    tick, seen = time.perf_counter(), 0
    loop_start, probe_start = tick, tick
    stream = iterate_batches(batches, step, cfg.data.workers, device)
    while step < last:
        lr = lr_at(step, stage_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean, *views = next(stream)
        with amp:
            if stage == "stage1":
                losses = model(*views, clean, prior_scale_at(step, cfg.loss))
            else:
                losses = model(*views, clean)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(params, stage_cfg.grad_clip)
        optimizer.step()
        step += 1
        seen += clean.shape[0] * world
        bar.update(1)
        if time_limit_s is not None and step in (PROBE_SKIP, PROBE_STEPS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            if step == PROBE_SKIP:
                probe_start = now
            else:
                rate = (PROBE_STEPS - PROBE_SKIP) / max(now - probe_start, 1e-9)
                set_steps(budget_steps(stage_cfg.steps, step, rate, time_limit_s - (now - loop_start)))
                last = stage_cfg.steps if stop_at is None else min(stop_at, stage_cfg.steps)
                bar.total = stage_cfg.steps
                write_config()
        if rank != 0:
            continue
        if step % cfg.log_every == 0 or step == last:
            now = time.perf_counter()
            record: dict[str, Any] = {k: round(float(v.detach()), 6) for k, v in losses.items()}
            record |= {"step": step, "lr": lr, "images_per_s": round(seen / max(now - tick, 1e-9), 2)}
            tick, seen = now, 0
            if (
                val_clean is not None
                and val_x is not None
                and (step % cfg.eval_every == 0 or step == stage_cfg.steps)
            ):
                record |= evaluate(objective, val_clean, val_x)
            append_record(log_path, record)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "lr")}, refresh=False
            )
        if step % cfg.ckpt_every == 0 or step == last:
            save(step)
    bar.close()
    stream.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return ckpt_path
