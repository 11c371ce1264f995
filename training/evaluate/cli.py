"""``dir-eval``: score restoration methods on the named protocols and write JSON / Markdown / figures.

Examples::

    dir-eval --protocol ablation --datasets cset14,bsd100 --methods all --json OUT.json --report OUT.md
    dir-eval scorecard runs/denoise-gated      # a candidate beside the shipped entry on every protocol
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from training.evaluate import scorecard
from training.evaluate.detect import DETECT_PRESET, DETECT_PRESETS, DetectRun, run_detect
from training.evaluate.errors import EvaluationError, UnknownNameError
from training.evaluate.methods import MethodContext, method_names, resolve_methods
from training.evaluate.niqe import niqe
from training.evaluate.protocols import protocol_names
from training.evaluate.report import write_report
from training.evaluate.runner import RunResult, ScoreCache, run_protocol
from training.paths import REPO_ROOT


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dir-eval``."""
    p = argparse.ArgumentParser(
        prog="dir-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--protocol",
        default="ablation",
        help=f"comma-separated protocols, or 'all' ({', '.join(ALL_PROTOCOLS)})",
    )
    p.add_argument("--datasets", default=None, help="comma-separated datasets (default: each protocol's own)")
    p.add_argument(
        "--methods",
        default="all",
        help=(
            f"comma-separated methods or 'all' ({', '.join(method_names())}, onnx:<dir>); "
            "'all' leaves out the diagnostics (onnx-pilot), which run only when named"
        ),
    )
    p.add_argument(
        "--detect-methods",
        default=DETECT_METHODS,
        help=f"methods scored on 'detect' (slow peers left out by default: {DETECT_METHODS})",
    )
    p.add_argument(
        "--detect-preset",
        choices=DETECT_PRESETS,
        default=DETECT_PRESET,
        help="ISP preset that degrades coco128_val on 'detect' (default %(default)s, the paper's Table 2)",
    )
    p.add_argument(
        "--detect-limit",
        type=int,
        default=None,
        help="at most N coco128_val images on 'detect' (default all)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="at most N images per dataset (first N by file name)"
    )
    p.add_argument(
        "--run", type=Path, default=None, help="training run folder for autoencoder / dir-* methods"
    )
    p.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store", help="model_store root")
    p.add_argument("--json", type=Path, default=None, help="write all per-image scores as JSON here")
    p.add_argument(
        "--report", type=Path, default=None, help="write the Markdown report here (figures in img/)"
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated protocol:method pairs to leave out, e.g. lowlight:bm3d (reported as skipped)",
    )
    p.add_argument("--note", action="append", default=[], help="a line for the report header (repeatable)")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder of cached per-image peer scores (reused when inputs are byte-identical)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


ALL_PROTOCOLS = [*protocol_names(), "detect"]
DETECT_METHODS = "identity,nlm,ffdnet,dir-full,onnx"


def _protocols(text: str) -> list[str]:
    names = ALL_PROTOCOLS if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in ALL_PROTOCOLS:
            raise UnknownNameError("protocol", name, ALL_PROTOCOLS)
    return names


def _provenance(args: argparse.Namespace) -> list[str]:
    """Report header lines: code commit, run folder and its checkpoints, model store."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lines = [f"Code: git commit `{commit}` (the working tree may hold uncommitted changes of other areas)."]
    if args.run is not None:
        ckpts = sorted(p.name for p in args.run.glob("*.pt")) if args.run.is_dir() else []
        lines.append(f"Checkpoints: run folder `{args.run}` ({', '.join(ckpts) or 'no .pt files'}).")
    lines.append(
        f"Model store: `{args.model_store}` (the shipped entry's version is named in its table row)."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on an evaluation error, with its message on stderr).
    ``dir-eval scorecard ...`` runs :func:`training.evaluate.scorecard.main`."""
    words = list(argv if argv is not None else sys.argv[1:])
    if words[:1] == ["scorecard"]:
        return scorecard.main(words[1:])
    args = build_parser().parse_args(argv)
    command = "dir-eval " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    ctx = MethodContext(run_dir=args.run, model_store=args.model_store)
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else None
    cache = ScoreCache(args.cache) if args.cache else None
    try:
        methods = resolve_methods(args.methods)
        runs: list[RunResult | DetectRun] = []
        for protocol in _protocols(args.protocol):
            if protocol == "detect":
                detect_methods = resolve_methods(args.detect_methods)
                runs.append(
                    run_detect(
                        detect_methods,
                        ctx,
                        args.detect_limit,
                        not args.no_progress,
                        args.cache,
                        args.detect_preset,
                    )
                )
                continue
            nr = ("NIQE", niqe) if protocol == "real" else None
            image_run = run_protocol(
                protocol,
                methods,
                ctx,
                datasets,
                args.limit,
                nr_score=nr,
                progress=not args.no_progress,
                cache=cache,
                skip=[m for p, _, m in (t.partition(":") for t in args.skip.split(",")) if p == protocol],
            )
            runs.append(image_run)
            for m in image_run.methods:
                if m.reason is not None:
                    print(f"[{protocol}] {m.method}: not run: {m.reason}", file=sys.stderr)
    except EvaluationError as exc:
        print(f"dir-eval: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "runs": [r.to_json() for r in runs]}, indent=1))
    if args.report:
        write_report(runs, args.report, command, [*_provenance(args), *args.note])
    for run in runs:
        print(f"\n## {run.protocol}")
        if isinstance(run, DetectRun):
            for row in run.rows:
                value = f"mAP@0.5 {row.map50:.3f}" if row.map50 is not None else f"not run: {row.reason}"
                print(f"{row.condition:32s} {value}")
            continue
        for m in run.methods:
            cells = [f"{m.method:14s}"]
            for ds in run.datasets:
                s = m.summary(ds)
                if s is not None:
                    value = (
                        f"{s.psnr:.2f} dB"
                        if s.psnr is not None
                        else f"nr {s.nr:.2f}"
                        if s.nr is not None
                        else "-"
                    )
                    cells.append(f"{ds} {value} ({s.s_per_mp:.2f} s/MP)")
            print("  ".join(cells) if m.reason is None else f"{m.method:14s}  not run: {m.reason}")
    return 0
