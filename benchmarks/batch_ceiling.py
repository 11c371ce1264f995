"""What batching can gain on this machine: the model alone, per tile, batching off against batching on.

The service's batching gains throughput on a CPU only where a model call of several tiles costs less per
tile than one call per tile. This times the entry's graphs exactly as the service runs them
(:meth:`service.store.RestoreModel.run`, built by ``from_settings``), without HTTP, decoding, tiling or
encoding:

* **off**: the settings of ``DIR_MAX_BATCH=1``: one tile per call, on a session with every core.
* **on, one call**: a full batch (``DIR_MAX_BATCH`` tiles of the base side's pixels: 8 x 256 px or 2 x 512 px
  for ``dir-restore``) in one call on the batching-off model: what a larger batch alone buys.
* **on, as served**: the same batch with the default settings: split into one part per core, each on a
  one-thread session, run at once.

Per graph and tile side, the medians over ``--repeats`` interleaved rounds of the time per tile, and the
ratio off / on. The mode rows add the graphs a 512 x 512 image runs through (``full``: guide + serving
graph; ``denoise``: its one graph) at one tile of 512 px. The ratio is an upper bound for the end-to-end
batching gain of ``benchmarks/serve.py``, whose requests also decode, tile, stitch and encode. Rewrites its
section of docs/BENCHMARKS.md unless ``--no-write``.

    python -m benchmarks.batch_ceiling --json
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.isp_throughput import cpu_model, publish
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH
from service.settings import DEFAULT_MODEL_STORE, Settings
from service.store import RestoreModel, resolve_entry, tile_geometry

START, END = "<!-- batch_ceiling:start -->", "<!-- batch_ceiling:end -->"
MODE_GRAPHS = {"full": (GUIDE_GRAPH, SERVE_GRAPH), "denoise": (DENOISE_GRAPH,)}


def per_tile(call: Callable[[], object], tiles: int) -> float:
    """Seconds per tile of one call of ``call`` that runs ``tiles`` tiles."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) / tiles


def time_graph(
    off: RestoreModel, on: RestoreModel, graph: str, side: int, batch: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per tile of ``graph`` at ``side`` px: off, one call of ``batch``, as served."""
    outputs = [GUIDE_SUM] if graph == GUIDE_GRAPH else on.graph_outputs(graph)[:1]
    one, full = off.grey_feed(graph, 1, side), on.grey_feed(graph, batch, side)

    def tile_by_tile() -> float:
        return statistics.fmean(per_tile(lambda: off.run(one, outputs, graph), 1) for _ in range(batch))

    def one_call() -> float:
        return per_tile(lambda: off.run(full, outputs, graph), batch)

    def as_served() -> float:
        return per_tile(lambda: on.run(full, outputs, graph), batch)

    calls = {"off": tile_by_tile, "on_one_call": one_call, "on_as_served": as_served}
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(call())
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def measure(model_store: Path, spec: str, repeats: int) -> dict[str, Any]:
    """Per-tile milliseconds of every graph of entry ``spec`` at each tile side, and per mode."""
    entry = resolve_entry(model_store, spec, "restore")
    on_settings = Settings(providers="CPUExecutionProvider", model_store=model_store)
    off_settings = Settings(providers="CPUExecutionProvider", model_store=model_store, max_batch=1)
    base, sides, _ = tile_geometry(entry, on_settings)
    on = RestoreModel.from_settings(entry, on_settings)
    off = RestoreModel.from_settings(entry, off_settings)
    rows: list[dict[str, Any]] = []
    for graph in on.graphs:
        for side in sides:
            batch = max(1, on_settings.max_batch * base * base // (side * side))
            ms = time_graph(off, on, graph, side, batch, repeats)
            rows.append({"graph": graph, "side": side, "batch": batch, "ms_per_tile": ms})
    modes = {}
    largest = max(sides)
    for mode, graphs in MODE_GRAPHS.items():
        picked = [r for r in rows if r["graph"] in graphs and r["side"] == largest]
        if len(picked) == len(graphs):
            keys = ("off", "on_one_call", "on_as_served")
            modes[mode] = {
                "side": largest,
                "ms_per_tile": {k: sum(r["ms_per_tile"][k] for r in picked) for k in keys},
            }
    return {
        "model": entry.ref,
        "parts": f"on: {on.parallel} part(s) x {on_settings.run_threads(on.parallel)} thread(s); off: "
        f"1 x {off_settings.run_threads(off.parallel)} thread(s)",
        "rows": rows,
        "modes": modes,
    }


def ratio(ms: dict[str, float], key: str) -> float:
    """Throughput of ``key`` relative to batching off (per-tile time off / per-tile time of ``key``)."""
    return ms["off"] / ms[key]


def markdown(result: dict[str, Any], command: str) -> str:
    """The docs/BENCHMARKS.md section."""
    lines = [
        START,
        "## What batching can gain: the model alone (`benchmarks/batch_ceiling.py`)",
        "",
        f"Machine: {result['machine']}, {result['cores']} cores. Command: `{command}`. Model: "
        f"`{result['model']}` ({result['parts']}). Measured {result['date']}; medians of "
        f"{result['repeats']} interleaved rounds; load average at start {result['load_at_start']}.",
        "",
        "Time per tile of each graph as the service runs it, without HTTP, decoding or encoding: batching "
        "off (one tile per call, every core), one call of a full batch on the same session, and the same "
        "batch as served (one part per core, one thread each, at once). The ratios are throughput against "
        "batching off, an upper bound for the end-to-end batching gain in the serving section.",
        "",
        "| graph | tile | batch | off (ms/tile) | one call (ms/tile) | as served (ms/tile) | one call / off "
        "| as served / off |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ms = r["ms_per_tile"]
        lines.append(
            f"| {r['graph']} | {r['side']} | {r['batch']} | {ms['off']:.0f} | {ms['on_one_call']:.0f} | "
            f"{ms['on_as_served']:.0f} | {ratio(ms, 'on_one_call'):.2f}x | {ratio(ms, 'on_as_served'):.2f}x |"
        )
    lines.append("")
    for mode, m in result["modes"].items():
        ms = m["ms_per_tile"]
        lines.append(
            f"- `{mode}` mode, one {m['side']}-px tile (a 512 x 512 image): {ms['off']:.0f} ms off, "
            f"{ms['on_as_served']:.0f} ms per tile as served: **at most {ratio(ms, 'on_as_served'):.2f}x** "
            f"from batching on this machine (one call of the batch: {ratio(ms, 'on_one_call'):.2f}x)."
        )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--model", default="dir-restore", help="entry: name or name/version")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    result = measure(args.model_store, args.model, args.repeats)
    result.update(
        machine=cpu_model(),
        cores=os.cpu_count(),
        repeats=args.repeats,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        load_at_start=", ".join(f"{v:.2f}" for v in load),
    )
    command = "python -m benchmarks.batch_ceiling " + shlex.join(sys.argv[1:] if argv is None else argv)
    publish(result, markdown(result, command.strip()), write=not args.no_write, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
