"""``dir-train``: stage1 | stage2 | ablation | denoise | score | plot.

dir-train stage1 --config tiny            # DiRNet + DfRNet/D* (Eq. 5, Eq. 6)
dir-train stage2 --config tiny            # alignment network A (Eq. 8), needs stage1.pt in run_dir
dir-train ablation --config tiny          # no_pilot, r0_only, autoencoder with the Stage II budget
dir-train denoise --config tiny           # the denoise mode's encoder (not in the paper), after stage2
dir-train stage1 --config tiny --resume   # continue bit for bit from run_dir/stage1.pt
dir-train stage1 --config gpu --time-limit 480   # fit the stage into 8 minutes (steps chosen by speed)
dir-train plot runs/tiny                  # loss curves -> runs/tiny/loss_curves.png
dir-train score runs/tiny                 # PSNR on cset14 / bsd100 (ablation protocol) -> scores.json
dir-train align --task detect --detector yolo-fastestv2 --init-from model_store/dir-restore/3.3.0
                                          # A with the detector in the loop (Eq. 8, gamma1 = 2)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from training.errors import ConfigError, DiRError
from training.train.align.config import load_align_config
from training.train.align.objective import LOSSES
from training.train.align.run import MODES, AlignRequest, saved_run, train_align
from training.train.config import config_from_dict, config_to_dict, load_config
from training.train.loop import train_stage
from training.train.runlog import plot_run
from training.train.score import score_run

STAGE_COMMANDS = (
    ("stage1", "Stage I: DiRNet (Eq. 5) and DfRNet + decoder D* (Eq. 6)"),
    ("stage2", "Stage II: alignment network A for restoration (Eq. 8)"),
    ("ablation", "ablation variants with the Stage II budget (after stage1)"),
    (
        "denoise",
        "the denoise mode's encoder (not in the paper): D*(denoiser(x)) = x's noise-free rendering, "
        "full system frozen (after stage2, or from --init-from ENTRY)",
    ),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dir-train", description="Train the DiR networks (two stages, ablations)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in STAGE_COMMANDS:
        _add_stage_command(sub, name, text)
    _add_score_command(sub)
    _add_align_command(sub)
    plot = sub.add_parser("plot", help="draw a run's loss curves to PNG")
    plot.add_argument("run", type=Path, help="run folder with metrics-*.jsonl")
    plot.add_argument("--out", type=Path, help="PNG path (default RUN/loss_curves.png)")
    return p


def _add_stage_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> None:
    """The subcommand of one training stage: the flags every stage shares, then the stage's own."""
    s = sub.add_parser(name, help=text, description=text)
    s.add_argument("--config", required=True, help="a named config (tiny, paper, default) or a YAML path")
    s.add_argument("--run-dir", help="override the config's run_dir")
    s.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint in run_dir")
    s.add_argument("--stop-at", type=int, help="stop (with a checkpoint) after this many steps")
    s.add_argument("--steps", type=int, help="the stage's step count (replaces the config's)")
    s.add_argument(
        "--workers", type=int, help="processes that build batches on the CPU (replaces data.workers)"
    )
    s.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="fit the stage into this many seconds: the step count (at most the config's) is set from "
        "the speed measured over the first 60 steps, and the lr schedule spans it",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    if name == "stage2":
        s.add_argument(
            "--init-from",
            type=Path,
            metavar="ENTRY",
            help="start from a model_store entry (e.g. model_store/dir-restore/3.3.0) instead of the "
            "run's stage1.pt: its DiRNet, DfRNet and D* (frozen), and its A when the config's A has the "
            "same shapes; no run folder of the entry needed",
        )
    if name == "denoise":
        s.add_argument(
            "--init-from",
            type=Path,
            metavar="ENTRY",
            help="take the full system from a model_store entry instead of the run's stage2.pt (the "
            "config's model must match the entry's); an entry with a trained denoiser (exported by "
            "dir-export --denoiser) is continued, others start the denoiser from DfRNet",
        )
    if name == "ablation":
        s.add_argument(
            "--variant",
            choices=["no_pilot", "r0_only", "autoencoder"],
            action="append",
            help="variant(s) to train (default: all three)",
        )


def _add_score_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dir-train score``: PSNR of a run (or an entry) on the ablation protocol."""
    score = sub.add_parser("score", help="PSNR on the ablation protocol (cset14, bsd100) -> RUN/scores.json")
    score.add_argument("run", type=Path, help="run folder, or a model_store entry (full method only)")
    score.add_argument(
        "--variant",
        action="append",
        choices=["full", "no_pilot", "r0_only", "autoencoder"],
        help="default: full",
    )
    score.add_argument("--datasets", nargs="+", default=["cset14", "bsd100"], help="evaluation sets")
    score.add_argument("--preset", default="ablation", help="degradation protocol")
    score.add_argument("--limit", type=int, help="only the first N images of each set")
    score.add_argument(
        "--crop", type=int, help="score the centre N x N of each image (default: whole images)"
    )
    score.add_argument(
        "--out",
        type=Path,
        help="JSON record to write (default: RUN/scores.json for the ablation protocol on whole images, "
        "RUN/scores-<preset>[-crop<N>].json otherwise; an entry's scores are only printed)",
    )


def _add_align_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dir-train align``: Stage II with the detector in the loop (Eq. 8) -> an aligned restore entry."""
    text = "Stage II with a detector in the loop (Eq. 8, gamma1 > 0) -> a task-aligned model_store entry"
    a = sub.add_parser("align", help=text, description=text)
    a.add_argument("--task", choices=["detect"], default="detect", help="the task network's kind")
    a.add_argument("--detector", help="detector entry NAME[@VERSION] in --store, or its folder")
    a.add_argument("--init-from", metavar="ENTRY", help="the dir-restore entry to start from (its A trains)")
    a.add_argument("--to", help="aligned entry folder (default STORE/dir-align-<detector>/1, git-ignored)")
    a.add_argument("--store", default="model_store", help="model store of the detector (default model_store)")
    a.add_argument("--detector-mode", choices=MODES, help="frozen: T unchanged (default); joint: T trains")
    a.add_argument("--loss", choices=LOSSES, help="task loss: detect (labels), distill (any images), both")
    a.add_argument("--images", nargs="+", help="clean image folders or dataset names (default: config's)")
    a.add_argument("--labels", help="folder of the images' YOLO label files (default: the YOLO layout)")
    a.add_argument("--detector-weights", help="Yolo-FastestV2 weights the entry was installed from")
    a.add_argument("--config", help="align config name or YAML (default align-detect-gpu on CUDA, else -cpu)")
    a.add_argument("--run-dir", help="override the config's run_dir")
    a.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its align.pt")
    a.add_argument("--steps", type=int, help="the run's step count (replaces the config's)")
    a.add_argument("--stop-at", type=int, help="stop (with a checkpoint, no entry) after this many steps")
    a.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="fit the run into this many seconds: the step count (at most the config's) is set from the "
        "speed measured over the first 60 steps, and the lr schedule spans it",
    )
    a.add_argument("--device", choices=["auto", "cpu", "cuda"], help="replaces the config's device")
    a.add_argument("--force", action="store_true", help="replace an existing --to entry")
    a.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")


def _align_request(args: argparse.Namespace) -> tuple[AlignRequest, str | None]:
    """The request of ``dir-train align`` and its config name: from the flags, or for ``--resume`` from
    the run's checkpoint (flags given then must agree with it)."""
    given = {
        "detector": args.detector,
        "init_from": args.init_from,
        "to": args.to,
        "mode": args.detector_mode,
        "loss": args.loss,
        "images": tuple(args.images) if args.images else None,
        "labels": args.labels,
        "detector_weights": args.detector_weights,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.resume is None:
        missing = [f"--{k.replace('_', '-')}" for k in ("detector", "init_from") if k not in given]
        if missing:
            raise ConfigError(f"dir-train align needs {' and '.join(missing)} (or --resume RUN_DIR)")
        return AlignRequest(store=args.store, **given), args.config
    _, saved = saved_run(Path(args.resume))
    for key, value in given.items():
        if getattr(saved, key) != value:
            raise ConfigError(
                f"--resume {args.resume}: the run has {key}={getattr(saved, key)!r}, not {value!r}"
            )
    return saved, args.config


def _align(args: argparse.Namespace) -> int:
    """Run ``dir-train align`` and print the aligned entry (or the checkpoint of a stopped run)."""
    request, config = _align_request(args)
    overrides: dict[str, Any] = {}
    if args.resume is not None:
        cfg, _ = saved_run(Path(args.resume))
        overrides["run_dir"] = args.resume
    else:
        cuda = torch.cuda.is_available() and args.device != "cpu"
        cfg = load_align_config(config or ("align-detect-gpu" if cuda else "align-detect-cpu"))
    if args.run_dir and args.resume is None:
        overrides["run_dir"] = args.run_dir
    if args.device:
        overrides["device"] = args.device
    cfg = replace(cfg, **overrides)
    result = train_align(
        cfg,
        request,
        resume=args.resume is not None,
        steps=args.steps,
        time_limit_s=args.time_limit,
        stop_at=args.stop_at,
        progress=not args.no_progress,
        force=args.force,
    )
    print(result.entry or result.checkpoint)
    if result.detector_entry is not None:
        print(result.detector_entry)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dir-train``; returns the process exit code (2 on a DiR error)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "align":
            return _align(args)
        if args.command == "plot":
            print(plot_run(args.run, args.out))
            return 0
        if args.command == "score":
            record = score_run(
                args.run,
                args.variant or ["full"],
                args.datasets,
                args.preset,
                args.limit,
                crop=args.crop,
                out=args.out,
            )
            print(json.dumps(record["psnr_db"], indent=2))
            return 0
        cfg = load_config(args.config, {"run_dir": args.run_dir} if args.run_dir else None)
        if args.workers is not None:
            raw = config_to_dict(cfg)
            cfg = config_from_dict({**raw, "data": {**raw["data"], "workers": args.workers}})
        common = {
            "resume": args.resume,
            "stop_at": args.stop_at,
            "progress": not args.no_progress,
            "steps": args.steps,
            "time_limit_s": args.time_limit,
        }
        if args.command == "ablation":
            for variant in args.variant or ["no_pilot", "r0_only", "autoencoder"]:
                print(train_stage(cfg, "ablation", variant=variant, **common))
        elif args.command in ("stage2", "denoise"):
            print(train_stage(cfg, args.command, init_from=args.init_from, **common))
        else:
            print(train_stage(cfg, args.command, **common))
    except DiRError as exc:
        print(f"dir-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
