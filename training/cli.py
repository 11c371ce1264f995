"""``dir-train``: stage1 | stage2 | ablation | denoise | score | plot.

dir-train stage1 --config tiny            # DiRNet + DfRNet/D* (Eq. 5, Eq. 6)
dir-train stage2 --config tiny            # alignment network A (Eq. 8), needs stage1.pt in run_dir
dir-train ablation --config tiny          # no_pilot, r0_only, autoencoder with the Stage II budget
dir-train denoise --config tiny           # the denoise mode's encoder (not in the paper), after stage2
dir-train stage1 --config tiny --resume   # continue bit for bit from run_dir/stage1.pt
dir-train stage1 --config gpu --time-limit 480   # fit the stage into 8 minutes (steps chosen by speed)
dir-train plot runs/tiny                  # loss curves -> runs/tiny/loss_curves.png
dir-train score runs/tiny                 # PSNR on cset14 / bsd100 (ablation protocol) -> scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.errors import DiRError
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dir-train``; returns the process exit code (2 on a DiR error)."""
    args = _parser().parse_args(argv)
    try:
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
