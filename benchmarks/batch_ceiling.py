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
graph; ``denoise``: its one graph) at one tile of 512 px.

Each ``--load`` level repeats the measurement while a second process keeps that fraction of one core busy
encoding 512 x 512 PNGs (0 = a quiet machine; 1 = one core taken), standing in for the work a serving
machine does besides the model: HTTP, decoding, tiling, stitching, encoding, and in ``benchmarks/serve.py``
the load-generating client itself. A call spread over every core waits for its slowest thread, so it loses
more to such work than one-thread parts do. Rewrites its section of docs/BENCHMARKS.md unless
``--no-write``.

    python -m benchmarks.batch_ceiling --json
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.isp_throughput import cpu_model, publish
from modelstore.store import resolve_entry
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH
from service.settings import DEFAULT_MODEL_STORE, Settings
from service.store import RestoreModel, tile_geometry

START, END = "<!-- batch_ceiling:start -->", "<!-- batch_ceiling:end -->"
MODE_GRAPHS = {"full": (GUIDE_GRAPH, SERVE_GRAPH), "denoise": (DENOISE_GRAPH,)}


def busy_encoding(duty: float, ready: Any, stop: Any) -> None:
    """Set ``ready``, then encode a 512 x 512 noise PNG again and again until ``stop`` is set, sleeping
    between encodes so that the process is busy for the fraction ``duty`` (0, 1] of one core."""
    pixels = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    ready.set()
    while not stop.is_set():
        started = time.perf_counter()
        image.save(io.BytesIO(), "PNG")
        if duty < 1:
            time.sleep((time.perf_counter() - started) * (1 - duty) / duty)


@contextmanager
def outside_load(duty: float) -> Iterator[None]:
    """Run :func:`busy_encoding` at ``duty`` in a separate (spawned) process while the block runs, from the
    moment it has started up; 0 runs nothing."""
    if not 0 <= duty <= 1:
        raise ValueError(f"outside load {duty} is not a fraction of one core in [0, 1]")
    if duty == 0:
        yield
        return
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=busy_encoding, args=(duty, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(timeout=60):
            raise RuntimeError("the outside-load process did not start within 60 s")
        yield
    finally:
        stop.set()
        process.join(timeout=10)


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


def measure(model_store: Path, spec: str, repeats: int, loads: tuple[float, ...] = (0.0,)) -> dict[str, Any]:
    """Per-tile milliseconds of every graph of entry ``spec`` at each tile side, and per mode, once for each
    outside load in ``loads`` (fractions of one core, see :func:`outside_load`)."""
    entry = resolve_entry(model_store, spec, "restore")
    on_settings = Settings(providers="CPUExecutionProvider", model_store=model_store)
    off_settings = Settings(providers="CPUExecutionProvider", model_store=model_store, max_batch=1)
    base, sides, _ = tile_geometry(entry, on_settings)
    on = RestoreModel.from_settings(entry, on_settings)
    off = RestoreModel.from_settings(entry, off_settings)
    runs = []
    for duty in loads:
        rows: list[dict[str, Any]] = []
        with outside_load(duty):
            for graph in on.graphs:
                for side in sides:
                    batch = max(1, on_settings.max_batch * base * base // (side * side))
                    ms = time_graph(off, on, graph, side, batch, repeats)
                    rows.append({"graph": graph, "side": side, "batch": batch, "ms_per_tile": ms})
        runs.append({"load": duty, "rows": rows, "modes": mode_totals(rows, max(sides))})
    return {
        "model": entry.ref,
        "parts": f"on: {on.parallel} part(s) x {on_settings.run_threads(on.parallel)} thread(s); off: "
        f"1 x {off_settings.run_threads(off.parallel)} thread(s)",
        "runs": runs,
    }


def mode_totals(rows: list[dict[str, Any]], side: int) -> dict[str, Any]:
    """Per restore mode, the per-tile milliseconds of its graphs at tile ``side`` added up."""
    modes = {}
    for mode, graphs in MODE_GRAPHS.items():
        picked = [r for r in rows if r["graph"] in graphs and r["side"] == side]
        if len(picked) == len(graphs):
            keys = ("off", "on_one_call", "on_as_served")
            totals = {k: sum(r["ms_per_tile"][k] for r in picked) for k in keys}
            modes[mode] = {"side": side, "ms_per_tile": totals}
    return modes


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
        "batching off. *Outside load* is the fraction of one core that a second process keeps busy encoding "
        "PNGs meanwhile, standing in for the request handling and the client of a serving run: 0 is the "
        "model alone on a quiet machine.",
        "",
        "| outside load | graph | tile | batch | off (ms/tile) | one call (ms/tile) | as served (ms/tile) "
        "| one call / off | as served / off |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for r in run["rows"]:
            ms = r["ms_per_tile"]
            lines.append(
                f"| {run['load']:g} | {r['graph']} | {r['side']} | {r['batch']} | {ms['off']:.0f} | "
                f"{ms['on_one_call']:.0f} | {ms['on_as_served']:.0f} | {ratio(ms, 'on_one_call'):.2f}x | "
                f"{ratio(ms, 'on_as_served'):.2f}x |"
            )
    lines.append("")
    for run in result["runs"]:
        for mode, m in run["modes"].items():
            ms = m["ms_per_tile"]
            lines.append(
                f"- Outside load {run['load']:g}, `{mode}` mode, one {m['side']}-px tile (a 512 x 512 "
                f"image): {ms['off']:.0f} ms off, {ms['on_as_served']:.0f} ms per tile as served: "
                f"**{ratio(ms, 'on_as_served'):.2f}x** from batching (one call of the batch: "
                f"{ratio(ms, 'on_one_call'):.2f}x)."
            )
    lines.append(END)
    return "\n".join(lines)


def fractions(text: str) -> tuple[float, ...]:
    """``--load``'s comma-separated fractions of one core, each in [0, 1]."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more fractions of one core in [0, 1]")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--model", default="dir-restore", help="entry: name or name/version")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--load",
        type=fractions,
        default=(0.0, 1.0),
        help="outside load levels, fractions of one core kept busy by a second process (default 0,1)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    result = measure(args.model_store, args.model, args.repeats, args.load)
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
