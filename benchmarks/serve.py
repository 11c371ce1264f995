"""Serving benchmark: the real ``dir-serve`` (and ``dir-worker``) processes over HTTP on this machine.

Measures, for one 512x512 JPEG (cset14 lenna re-encoded at quality 90) at concurrency 1, 8 and 32:
throughput (requests/s) and p50/p99 latency for (a) batching off (max batch 1, no delay), (b) embedded
batching (the defaults), (c) Redis Streams + 1 worker, each with ``?mode=full`` (the paper's two-pass DiR
restoration), and (d) embedded and (e) batching off with ``?mode=denoise``. Each server first serves one
unmeasured wave at the highest concurrency; at concurrency > 1 every client sends :data:`WAVES` requests.
Also: the Redis path's overhead over embedded at concurrency 1 with both servers up and requests
interleaved; ONNX Runtime vs PyTorch eager latency on the same weights and the same computation (PyTorch
rebuilt from the entry's model.onnx); and the API process's peak RSS (VmHWM) while serving one 12-megapixel
JPEG.

    .venv/bin/python -m benchmarks.serve --json            # prints JSON, rewrites docs/BENCHMARKS.md section

Rewrites its section of docs/BENCHMARKS.md between ``<!-- serve:start -->`` and ``<!-- serve:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import (
    cpu_model,
    free_port,
    jpeg_bytes,
    peak_rss_mb,
    redis_reachable,
    spawn,
    wait_ready,
    write_section,
)
from benchmarks.ort_torch import ort_vs_torch
from benchmarks.serve_report import markdown, ratios
from modelstore.store import ModelEntry, resolve_entry
from service.client.client import server_timings
from service.settings import DEFAULT_MODEL_STORE, Settings
from service.store import tile_geometry
from service.tiling import choose_tile
from training.paths import data_root

#: Requests at concurrency 1: the Redis-vs-embedded p50 difference is ~2 % of a request, so it needs more
#: samples than the throughput rows (8 requests gave +15 to +28 ms run to run).
SERIAL_REQUESTS = 24
#: Requests per client at concurrency > 1: a single wave (one request per client) measures the ramp (the
#: first tiles of a burst run before the rest arrive, and every request of a batch finishes together).
WAVES = 4
MODES = {
    "batching_off": {"DIR_MAX_BATCH": "1", "DIR_MAX_QUEUE_DELAY_MS": "0"},
    "embedded": {},
    "redis_1_worker": {},
    "embedded_denoise": {},
    "batching_off_denoise": {"DIR_MAX_BATCH": "1", "DIR_MAX_QUEUE_DELAY_MS": "0"},
}
#: The full DiR restoration, named explicitly: requests without a mode run the server's default
#: (DIR_RESTORE_MODE, ``denoise`` for entries that have it since 3.2.0).
FULL = "/v1/restore?mode=full"
#: The request each mode sends (default :data:`FULL`).
PATHS = {"embedded_denoise": "/v1/restore?mode=denoise", "batching_off_denoise": "/v1/restore?mode=denoise"}


@contextmanager
def server(env: dict[str, str], redis_url: str | None) -> Iterator[tuple[str, int]]:
    """A ``dir-serve`` process (plus one ``dir-worker`` when ``redis_url``); yields (base URL, API pid)."""
    port = free_port()
    procs = []
    if redis_url:
        env = {**env, "DIR_QUEUE": redis_url, "DIR_STREAM_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
        procs.append(spawn("worker", [], env))
    api = spawn("serve", ["--host", "127.0.0.1", "--port", str(port)], env)
    procs.append(api)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        yield base, api.pid
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)


async def load(base: str, body: bytes, concurrency: int, requests: int, path: str = FULL) -> dict[str, float]:
    """``requests`` POSTs to ``path`` from ``concurrency`` concurrent clients: rps and latency percentiles."""
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def one_client() -> None:
            nonlocal failures
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(path, content=body, headers={"Content-Type": "image/jpeg"})
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*[one_client() for _ in range(concurrency)])
        wall = time.perf_counter() - started
    ordered = np.sort(np.asarray(latencies))
    return {
        "concurrency": concurrency,
        "requests": requests,
        "failures": failures,
        "throughput_rps": requests / wall,
        "p50_ms": float(np.percentile(ordered, 50) * 1000),
        "p99_ms": float(np.percentile(ordered, 99) * 1000),
    }


def serving_rows(
    body: bytes, levels: list[int], env: dict[str, str], redis_url: str | None
) -> dict[str, Any]:
    """Every mode at every concurrency level."""
    rows: dict[str, Any] = {}
    for mode, extra in MODES.items():
        use_redis = mode.startswith("redis")
        if use_redis and not redis_url:
            rows[mode] = {"skipped": "no Redis reachable"}
            continue
        path = PATHS.get(mode, FULL)
        with server({**env, **extra}, redis_url if use_redis else None) as (base, _):
            # One wave at the highest concurrency first: the rows then measure a warm server, every
            # session and buffer already used at the shapes and concurrency the rows need.
            asyncio.run(load(base, body, max(levels), max(levels), path))
            counts = [SERIAL_REQUESTS if c == 1 else WAVES * c for c in levels]
            rows[mode] = [
                asyncio.run(load(base, body, c, n, path)) for c, n in zip(levels, counts, strict=True)
            ]
        print(f"{mode}: {rows[mode]}", file=sys.stderr)
    return rows


def redis_overhead(body: bytes, env: dict[str, str], redis_url: str, pairs: int) -> dict[str, Any]:
    """Redis + 1 worker vs embedded at concurrency 1, both servers up at once and requests interleaved.

    Each pair sends one request to each server back to back (alternating which goes first), so both see
    the same machine load; the overhead is the median of the per-pair differences (Redis minus embedded),
    of the whole latency and of the latency outside the model (minus the ``compute`` of ``Server-Timing``,
    the model runs, which both paths share and which carry most of the run-to-run spread).
    """
    with server(env, None) as (embedded, _), server(env, redis_url) as (redis_base, _):
        for base in (embedded, redis_base):
            asyncio.run(load(base, body, 1, 2))
        times: dict[str, list[tuple[float, float]]] = {embedded: [], redis_base: []}
        with httpx.Client(timeout=600) as client:
            for k in range(pairs):
                for base in (embedded, redis_base) if k % 2 == 0 else (redis_base, embedded):
                    started = time.perf_counter()
                    response = client.post(
                        f"{base}{FULL}", content=body, headers={"Content-Type": "image/jpeg"}
                    )
                    latency = (time.perf_counter() - started) * 1000
                    if response.status_code != 200:
                        raise RuntimeError(f"{base}: HTTP {response.status_code}: {response.text[:200]}")
                    times[base].append((latency, server_timings(response.headers)["compute"] * 1000))
    emb, red = np.asarray(times[embedded]), np.asarray(times[redis_base])
    total = red[:, 0] - emb[:, 0]
    outside = (red[:, 0] - red[:, 1]) - (emb[:, 0] - emb[:, 1])
    return {
        "pairs": pairs,
        "embedded_p50_ms": float(np.median(emb[:, 0])),
        "redis_p50_ms": float(np.median(red[:, 0])),
        "median_difference_ms": float(np.median(total)),
        "difference_quartiles_ms": [float(np.percentile(total, 25)), float(np.percentile(total, 75))],
        "embedded_outside_model_p50_ms": float(np.median(emb[:, 0] - emb[:, 1])),
        "redis_outside_model_p50_ms": float(np.median(red[:, 0] - red[:, 1])),
        "median_outside_model_difference_ms": float(np.median(outside)),
        "outside_model_difference_quartiles_ms": [
            float(np.percentile(outside, 25)),
            float(np.percentile(outside, 75)),
        ],
    }


def peak_rss_12mp(env: dict[str, str], photo: Image.Image) -> dict[str, Any]:
    """Peak RSS of a fresh API process serving one 4000x3000 JPEG (upscaled real photo)."""
    body = jpeg_bytes(photo.resize((4000, 3000), Image.Resampling.BICUBIC), quality=92)
    with server(env, None) as (base, pid):
        idle = peak_rss_mb(pid)
        started = time.perf_counter()
        response = httpx.post(f"{base}{FULL}", content=body, timeout=1800)
        seconds = time.perf_counter() - started
        peak = peak_rss_mb(pid)
    return {
        "pixels": 4000 * 3000,
        "jpeg_bytes": len(body),
        "status": response.status_code,
        "tiles": int(response.headers.get("x-tiles", 0)),
        "seconds": seconds,
        "peak_rss_before_mb": idle,
        "peak_rss_mb": peak,
    }


def tile_plan(entry: ModelEntry, tile_sizes: str, height: int, width: int) -> str:
    """The tile sides the servers choose from and the grids of the benchmark image and the 12 MP photo."""
    _, sides, overlap = tile_geometry(entry, Settings(tile_sizes=tile_sizes))
    grids = {
        f"{h}x{w}": choose_tile(h, w, sides, overlap, entry.manifest.size_multiple)
        for h, w in ((height, width), (3000, 4000))
    }
    chosen = "; ".join(f"{size}: {g.count} tile(s) of {g.tile}" for size, g in grids.items())
    return f"{' or '.join(map(str, sides))} px, overlap {overlap}; {chosen}"


def server_threads(parallel_runs: int) -> str:
    """How the benchmarked servers and the worker spread ONNX Runtime over the cores (the settings' defaults
    on the CPU provider), for the default batching and with batching off."""
    described = []
    for label, mode in (("batching on", {}), ("batching off", MODES["batching_off"])):
        settings = Settings(parallel_runs=parallel_runs, max_batch=int(mode.get("DIR_MAX_BATCH", "8")))
        parallel = settings.parallel(gpu=False)
        described.append(f"{label}: {parallel} part(s) x {settings.run_threads(parallel)} thread(s)")
    return "a model call runs in parts at once, " + "; ".join(described)


def main(argv: list[str] | None = None) -> None:
    """Run everything, print a summary (JSON with --json) and rewrite the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--model", default="dir-restore", help="restoration entry ('name' or 'name/version')")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ORT intra-op threads of the ORT vs torch comparison (the servers size their own)",
    )
    parser.add_argument(
        "--parallel-runs",
        type=int,
        default=0,
        help="DIR_PARALLEL_RUNS of the servers and the worker (0: the service default, one per core)",
    )
    parser.add_argument(
        "--tile-sizes",
        default="",
        help="DIR_TILE_SIZES of the servers and the worker (empty: the service default, the manifest's tile "
        "side and twice it)",
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=10, help="forward passes for ORT vs torch")
    parser.add_argument(
        "--torch-run",
        type=Path,
        help="run folder for load_system (default: PyTorch rebuilt from the entry's model.onnx)",
    )
    parser.add_argument("--pairs", type=int, default=30, help="interleaved Redis/embedded request pairs")
    parser.add_argument(
        "--only-redis-overhead",
        action="store_true",
        help="measure only the interleaved Redis vs embedded comparison (prints JSON, docs untouched)",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    entry = resolve_entry(args.model_store, args.model, "restore")
    env = {
        "DIR_MODEL_STORE": str(args.model_store),
        "DIR_RESTORE_MODEL": entry.ref,
        "DIR_PARALLEL_RUNS": str(args.parallel_runs),
        "DIR_TILE_SIZES": args.tile_sizes,
        "DIR_REQUEST_TIMEOUT_S": "1800",
        "DIR_QUEUE_BOUND": "100000",
    }
    photo = Image.open(data_root() / "cset14" / "lenna.png").convert("RGB")
    body = jpeg_bytes(photo)
    levels = [int(c) for c in args.concurrency.split(",")]
    redis_url = args.redis if redis_reachable(args.redis) else None
    load_at_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.only_redis_overhead:
        if redis_url is None:
            parser.error(f"no Redis answers at {args.redis}")
        print(json.dumps(redis_overhead(body, env, redis_url, args.pairs), indent=2))
        return
    serving = serving_rows(body, levels, env, redis_url)
    overhead = redis_overhead(body, env, redis_url, args.pairs) if redis_url else None
    image = np.asarray(Image.open(io.BytesIO(body)), dtype=np.float32) / 255
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, no GPU, {platform.system()}",
        "command": "python -m benchmarks.serve " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": entry.ref,
        "tile": tile_plan(entry, args.tile_sizes, photo.height, photo.width),
        "threads": args.threads,
        "server_threads": server_threads(args.parallel_runs),
        "load_at_start": load_at_start,
        "serving": serving,
        "ratios": ratios(serving),
        "redis_overhead": overhead,
        "ort_vs_torch": ort_vs_torch(entry, args.threads, image, args.repeats, args.torch_run),
        "peak_rss_12mp": peak_rss_12mp(env, photo),
    }
    if not args.no_doc:
        write_section(markdown(result, WAVES))
    print(json.dumps(result, indent=2) if args.json else markdown(result, WAVES))


if __name__ == "__main__":
    main()
