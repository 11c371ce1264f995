"""``dir-eval scorecard CANDIDATE``: every protocol in one command, a candidate beside the shipped entry and
the peers, and the rule that decides whether the candidate replaces the default.

Rows (docs/EVALUATION.md, "Scorecard"): ``real`` cc15 in the default mode (mean gain over the noisy input,
worst image, images made worse) and in ``full``; clean-input fidelity (the clean cset14 / bsd100 image as
input); ``ablation`` in ``full`` plain and after the oracle colour fit, and in the default mode; ``lowlight``
in the default mode; ``detect`` where a detector is installed; serving cost per megapixel of each mode. All
images are float32 sRGB in [0, 1]; PSNR in dB (peak 1).

A candidate replaces the default when it is at least as good as the shipped entry on every primary row and
loses no dB row by more than :data:`~training.evaluate.scorecard_rows.TOLERANCE_DB`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from training.colour import affine_colour_fit
from training.evaluate.detect import run_detect
from training.evaluate.errors import EvaluationError, ProtocolError
from training.evaluate.methods import MethodContext, MethodSpec, get_method
from training.evaluate.methods.base import OracleRestorer, RestoreFn
from training.evaluate.methods.entries import OnnxDenoiseRestorer, OnnxRestorer, latest_store_entry
from training.evaluate.runner import RunResult, ScoreCache, run_protocol
from training.evaluate.scorecard_rows import ROWS, Line, Row, decide, render, row_stat
from training.export.onnx_export import export_entry, export_run

PEERS = ("nlm", "nlm-oracle", "dncnn", "ffdnet", "ffdnet-oracle")
"""Peers scored beside the candidate (BM3D is left out by default: 24-50 s per megapixel here)."""

Side = str
"""``candidate`` or ``shipped``."""


def _entry_specs(entry: Path, side: Side) -> dict[str, MethodSpec]:
    """The methods of one entry: ``<side>:default`` (the mode the service runs when a request names none:
    ``denoise`` where the entry has its graph), ``<side>:full`` and ``<side>:full-fit`` (``full`` after
    the per-image affine colour fit to the reference, an oracle: it isolates what is not global colour)."""

    def default(ctx: MethodContext) -> RestoreFn:
        try:
            return OnnxDenoiseRestorer(entry)
        except EvaluationError:
            return OnnxRestorer(entry)

    def full(ctx: MethodContext) -> RestoreFn:
        return OnnxRestorer(entry)

    def fitted(ctx: MethodContext) -> OracleRestorer:
        run = OnnxRestorer(entry)

        def restore(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
            return affine_colour_fit(run(degraded).double(), clean.double()).float().clamp(0.0, 1.0)

        return restore

    name = f"{entry.parent.name}/{entry.name}"
    return {
        f"{side}:default": MethodSpec(
            f"{side}:default", f"{name} default mode", "shipped", default, str(entry)
        ),
        f"{side}:full": MethodSpec(f"{side}:full", f"{name} full", "shipped", full, str(entry)),
        f"{side}:full-fit": MethodSpec(
            f"{side}:full-fit",
            f"{name} full, oracle colour fit",
            "shipped",
            None,
            f"{entry}, then the best per-image affine RGB map to the reference",
            build_oracle=fitted,
        ),
    }


COST_SIDE = 512
"""Side of the square image the serving cost is timed on (one 512-px tile, the service's larger tile)."""


def _methods_for(protocol: str, specs: dict[str, MethodSpec], peers: Sequence[str]) -> list[MethodSpec]:
    modes = {"real": ("default", "full"), "clean": ("default", "full"), "lowlight": ("default",)}
    wanted = modes.get(protocol, ("default", "full", "full-fit"))
    ours = [specs[f"{side}:{m}"] for side in ("candidate", "shipped") for m in wanted]
    return [get_method("identity"), *ours, *(get_method(p) for p in peers)]


def run_scorecard(
    candidate: Path,
    shipped: Path,
    ctx: MethodContext,
    peers: Sequence[str] = PEERS,
    limit: int | None = None,
    cache: ScoreCache | None = None,
    progress: bool = True,
) -> tuple[list[Line], list[RunResult]]:
    """Score ``candidate`` and ``shipped`` (model_store entry folders) and the peers on every protocol of
    :data:`ROWS` (``limit``: first N images per dataset) -> the computed rows and the protocol runs."""
    specs = {**_entry_specs(candidate, "candidate"), **_entry_specs(shipped, "shipped")}
    runs: dict[str, RunResult] = {}
    protocols = sorted({r.protocol for r in ROWS}, key=[r.protocol for r in ROWS].index)
    for protocol in tqdm(protocols, desc="scorecard", unit="protocol", disable=not progress):
        datasets = sorted({r.dataset for r in ROWS if r.protocol == protocol})
        runs[protocol] = run_protocol(
            protocol,
            _methods_for(protocol, specs, peers),
            ctx,
            datasets,
            limit,
            progress=progress,
            cache=cache,
        )
    lines = [_line(row, runs[row.protocol], peers) for row in ROWS]
    return lines, list(runs.values())


def _line(row: Row, run: RunResult, peers: Sequence[str]) -> Line:
    """The computed :class:`Row` from its protocol's run."""
    by_name = {m.method: m for m in run.methods}
    reference = by_name.get("identity")

    def value(name: str) -> float | None:
        result = by_name.get(name)
        return None if result is None or result.reason else row_stat(result, reference, row.dataset, row.stat)

    best: tuple[str | None, float | None] = (None, None)
    if row.peers:
        for p in peers:
            v = value(p)
            if v is not None and (best[1] is None or (v > best[1]) == row.higher_is_better):
                best = (by_name[p].label, v)
    return Line(row, value(f"candidate:{row.mode}"), value(f"shipped:{row.mode}"), *best)


def cost_lines(candidate: Path, shipped: Path, repeats: int = 5) -> list[Line]:
    """Seconds per megapixel of each mode of both entries, timed side by side (interleaved, median of
    ``repeats``) on one :data:`COST_SIDE`-px image, one call per image as the evaluation runs them."""
    ctx = MethodContext()
    specs = {**_entry_specs(candidate, "candidate"), **_entry_specs(shipped, "shipped")}
    image = torch.rand(1, 3, COST_SIDE, COST_SIDE, generator=torch.Generator().manual_seed(0))
    lines = []
    for mode in ("default", "full"):
        runners = {side: specs[f"{side}:{mode}"].bind(ctx) for side in ("candidate", "shipped")}
        times: dict[str, list[float]] = {side: [] for side in runners}
        for _ in range(repeats + 1):
            for side, run in runners.items():
                start = time.perf_counter()
                run(image, None)
                times[side].append(time.perf_counter() - start)
        mp = COST_SIDE * COST_SIDE / 1e6
        median = {side: sorted(t[1:])[len(t[1:]) // 2] / mp for side, t in times.items()}
        row = Row(
            f"cost, {mode} mode (s/MP, {COST_SIDE} px, side by side)",
            "cost",
            "-",
            mode,
            "s_per_mp",
            False,
            peers=False,
        )
        lines.append(Line(row, median["candidate"], median["shipped"], None, None))
    return lines


def detect_lines(candidate: Path, shipped: Path, ctx: MethodContext, progress: bool) -> list[str]:
    """mAP@0.5 on ``detect`` for both entries' default modes, or a line saying why it did not run."""
    specs = {**_entry_specs(candidate, "candidate"), **_entry_specs(shipped, "shipped")}
    methods = [
        get_method("identity"),
        specs["candidate:default"],
        specs["shipped:default"],
        get_method("ffdnet"),
    ]
    try:
        run = run_detect(methods, ctx, None, progress)
    except ProtocolError as exc:
        return [f"Detect: not run ({exc})."]
    cells = [f"{row.condition} {row.map50:.3f}" for row in run.rows if row.map50 is not None]
    return [f"Detect (coco128_val, default-isp, mAP@0.5, {run.detector}): " + "; ".join(cells) + "."]


def candidate_entry(path: Path, model_store: Path) -> Path:
    """``path`` itself when it is a model_store entry (manifest.json), else the run folder exported into
    ``path/scorecard-entry`` (a denoise.pt started from an entry is exported onto that entry)."""
    if (path / "manifest.json").is_file():
        return path
    out = path / "scorecard-entry"
    denoise = path / "denoise.pt"
    if not (out / "manifest.json").is_file() or out.stat().st_mtime < max(
        p.stat().st_mtime for p in path.glob("*.pt")
    ):
        shutil.rmtree(out, ignore_errors=True)
        started = (
            torch.load(denoise, map_location="cpu", weights_only=True).get("init_from", {})
            if denoise.is_file()
            else {}
        )
        if started.get("entry"):
            export_entry(model_store / str(started["entry"]), out, "0.0.0+candidate", denoiser=denoise)
        else:
            export_run(path, out, "0.0.0+candidate")
    return out


def write(lines: Sequence[Line], runs: Sequence[RunResult], table: str, json_path: Path | None) -> None:
    """Write every row and per-image score as JSON to ``json_path`` (when given)."""
    if json_path is None:
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": [
            {
                **asdict(line.row),
                "candidate": line.candidate,
                "shipped": line.shipped,
                "peer": line.peer,
                "peer_value": line.peer_value,
            }
            for line in lines
        ],
        "replace": decide(lines)[0],
        "table": table,
        "runs": [r.to_json() for r in runs],
    }
    json_path.write_text(json.dumps(payload, indent=1))


def main(argv: Sequence[str]) -> int:
    """``dir-eval scorecard`` (argv after the word ``scorecard``); exit 2 on an evaluation error."""
    p = argparse.ArgumentParser(prog="dir-eval scorecard", description=__doc__)
    p.add_argument("candidate", type=Path, help="a model_store entry folder, or a dir-train run folder")
    p.add_argument(
        "--shipped", type=Path, default=None, help="the entry to compare with (default: highest dir-restore)"
    )
    p.add_argument("--model-store", type=Path, default=None, help="model_store root (default: the repo's)")
    p.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated peer methods (default {','.join(PEERS)})"
    )
    p.add_argument("--limit", type=int, default=None, help="at most N images per dataset (default all)")
    p.add_argument("--cache", type=Path, default=None, help="folder of cached per-image scores")
    p.add_argument("--detect", action="store_true", help="also score detection (needs an installed detector)")
    p.add_argument("--json", type=Path, default=None, help="write rows and per-image scores here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    ctx = MethodContext(model_store=args.model_store) if args.model_store else MethodContext()
    try:
        shipped = args.shipped or latest_store_entry(ctx.model_store)
        if not args.candidate.is_dir():
            raise EvaluationError(f"candidate {args.candidate} is neither an entry nor a run folder")
        candidate = candidate_entry(args.candidate, ctx.model_store)
        peers = [x.strip() for x in args.peers.split(",") if x.strip()]
        for name in peers:
            get_method(name)
        cache = ScoreCache(args.cache) if args.cache else None
        lines, runs = run_scorecard(candidate, shipped, ctx, peers, args.limit, cache, not args.no_progress)
        lines += cost_lines(candidate, shipped)
        extra = detect_lines(candidate, shipped, ctx, not args.no_progress) if args.detect else []
    except EvaluationError as exc:
        print(f"dir-eval scorecard: error: {exc}", file=sys.stderr)
        return 2
    table = render(lines, str(args.candidate), f"{shipped.parent.name}/{shipped.name}", extra)
    write(lines, runs, table, args.json)
    print(table)
    return 0
