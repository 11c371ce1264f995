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

    .venv/bin/python benchmarks/serve.py --json            # prints JSON, rewrites docs/BENCHMARKS.md section

Rewrites its section of docs/BENCHMARKS.md between ``<!-- serve:start -->`` and ``<!-- serve:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from modelstore.store import ModelEntry, resolve_entry
from service.client.client import server_timings
from service.settings import DEFAULT_MODEL_STORE, Settings
from service.store import tile_geometry
from service.tiling import choose_tile
from training.paths import data_root

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- serve:start -->", "<!-- serve:end -->"
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


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform string)."""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` encoded as JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def spawn(func: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``service.cli.<func>`` as a subprocess with extra environment."""
    code = f"import sys; from service.cli import {func}; {func}(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args, "--log-level", "warning"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(base: str, api: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Poll ``base``/readyz until it answers 200; RuntimeError when the process exits first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"dir-serve exited with {api.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


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


def _single_pass_onnx(system: Any, path: Path) -> None:
    """Export ``system`` as one graph image -> restored that pools over its own input (the computation
    of PyTorch's whole-image ``system(image)``), for the like-for-like single-pass comparison only."""
    import warnings

    import torch

    class _Restored(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.system = system

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.system(image)["restored"]

    axes = {"image": {0: "N", 2: "H", 3: "W"}, "restored": {0: "N", 2: "H", 3: "W"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Restored().eval(),
            (torch.rand(1, 3, 64, 64),),
            str(path),
            input_names=["image"],
            output_names=["restored"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def ort_vs_torch(
    entry: ModelEntry, threads: int, image: np.ndarray, repeats: int, torch_run: Path | None
) -> dict[str, Any]:
    """Median latency of one whole-image (1, 3, H, W) restoration, ONNX Runtime vs PyTorch eager, each
    pair running the same computation on the same weights, interleaved in one run.

    Weights: ``torch_run`` (a run folder, for ``load_system``) when given, else the PyTorch system rebuilt
    from the entry's own model.onnx (``training.models.checkpoint.system_from_entry``), so both runtimes hold
    the shipped weights. Rows, for a two-pass entry: ``two_pass`` (ORT guide.onnx then model.onnx with the
    features' mean, against torch ``guide_features`` then ``system(image, guide_mean)``: what serving
    computes) and ``single_pass`` (a graph that pools over its own input, exported to a temporary file,
    against torch ``system(image)``); a single-pass entry has only ``single_pass`` (its model.onnx).
    ORT sessions are built as the service builds them (``modelstore.runner.make_session``).
    """
    import torch

    from modelstore.runner import make_session
    from training.models import load_system
    from training.models.checkpoint import system_from_entry

    torch.set_num_threads(threads)
    if torch_run is not None:
        system = load_system(torch_run, "full", device="cpu")
        weights = f"weights of run {torch_run.name} against the entry's graphs"
    else:
        system = system_from_entry(entry.path)
        weights = f"the shipped weights of {entry.ref} (PyTorch rebuilt from its model.onnx)"
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    tensor = torch.from_numpy(x)
    guide = entry.manifest.guide
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if guide is None:
            single = make_session(entry.path / entry.manifest.onnx_file, ["CPUExecutionProvider"], threads)
        else:
            serve = make_session(entry.path / entry.manifest.onnx_file, ["CPUExecutionProvider"], threads)
            guide_session = make_session(entry.path / guide.onnx_file, ["CPUExecutionProvider"], threads)

            def ort_two_pass() -> object:
                (features,) = guide_session.run(None, {"image": x})
                return serve.run(None, {"image": x, guide.mean_input: features.mean(axis=(2, 3))})

            def torch_two_pass() -> object:
                guide_mean = system.guide_features(tensor).mean(dim=(2, 3))
                return system(tensor, guide_mean)

            pairs["two_pass"] = (ort_two_pass, torch_two_pass)
            _single_pass_onnx(system, Path(tmp) / "single.onnx")
            single = make_session(Path(tmp) / "single.onnx", ["CPUExecutionProvider"], threads)
        pairs["single_pass"] = (lambda: single.run(None, {"image": x}), lambda: system(tensor))
        times: dict[str, dict[str, list[float]]] = {k: {"ort": [], "torch": []} for k in pairs}
        with torch.inference_mode():
            for ort_fn, torch_fn in pairs.values():
                ort_fn(), torch_fn()
            for _ in range(repeats):
                for name, (ort_fn, torch_fn) in pairs.items():
                    for side, fn in (("ort", ort_fn), ("torch", torch_fn)):
                        started = time.perf_counter()
                        fn()
                        times[name][side].append(time.perf_counter() - started)
    rows = {}
    for name, sides in times.items():
        ort_ms = statistics.median(sides["ort"]) * 1000
        torch_ms = statistics.median(sides["torch"]) * 1000
        rows[name] = {"ort_ms": ort_ms, "torch_ms": torch_ms, "ort_over_torch": ort_ms / torch_ms}
    return {"input_shape": list(x.shape), "threads": threads, "repeats": repeats, "weights": weights, **rows}


def redis_reachable(url: str) -> bool:
    """Whether ``url`` answers PING."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


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


def markdown(result: dict[str, Any]) -> str:
    """The docs/BENCHMARKS.md section."""
    lines = [
        START,
        "## Serving (`benchmarks/serve.py`)",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Model: `{result['model']}` "
        f"(tile sides {result['tile']}). Servers: {result['server_threads']}; "
        f"ORT vs torch: {result['threads']} intra-op threads. Measured {result['date']}.",
        f"Load average at start: {result['load_at_start']}; the modes ran one after another in the same run, "
        "so compare ratios, not absolute numbers across runs. Each server first serves one wave of "
        "requests at the highest concurrency (not counted); at concurrency c > 1 each of the c clients then "
        f"sends {WAVES} requests, one after another.",
        "",
        "| mode | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, rows in result["serving"].items():
        if isinstance(rows, dict):
            lines.append(f"| {mode} | - | - | {rows['skipped']} | | | |")
            continue
        for r in rows:
            lines.append(
                f"| {mode} | {r['concurrency']} | {r['requests']} | {r['throughput_rps']:.2f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} |"
            )
    lines.append("")
    for key, value in result["ratios"].items():
        lines.append(f"- {key}: {value}")
    over = result.get("redis_overhead")
    if over:
        q1, q3 = over["difference_quartiles_ms"]
        lines.append(
            f"- Redis + 1 worker vs embedded at concurrency 1, both servers up and requests interleaved "
            f"({over['pairs']} pairs): p50 {over['redis_p50_ms']:.0f} vs {over['embedded_p50_ms']:.0f} ms, "
            f"median paired difference {over['median_difference_ms']:+.1f} ms (quartiles {q1:+.1f} / "
            f"{q3:+.1f} ms; target <= 15 ms)"
        )
        o1, o3 = over["outside_model_difference_quartiles_ms"]
        lines.append(
            f"- The same pairs, time outside the model (latency minus `Server-Timing` compute): "
            f"p50 {over['redis_outside_model_p50_ms']:.0f} vs "
            f"{over['embedded_outside_model_p50_ms']:.0f} ms, "
            f"median paired difference {over['median_outside_model_difference_ms']:+.1f} ms "
            f"(quartiles {o1:+.1f} / {o3:+.1f} ms)"
        )
    ot = result["ort_vs_torch"]
    what = {
        "two_pass": "two-pass as served (guide graph, its mean, serving graph)",
        "single_pass": "single pass (the graph pools over its own input)",
    }
    for name, label in what.items():
        if name in ot:
            row = ot[name]
            lines.append(
                f"- ONNX Runtime vs PyTorch eager, {label}, one {ot['input_shape']} image, "
                f"{ot['threads']} threads, median of {ot['repeats']} interleaved, {ot['weights']}: "
                f"ORT {row['ort_ms']:.1f} ms, torch {row['torch_ms']:.1f} ms, "
                f"ORT/torch = {row['ort_over_torch']:.2f} (target <= 0.8)"
            )
    rss = result["peak_rss_12mp"]
    lines.append(
        f"- One 12 MP JPEG (4000x3000, {rss['tiles']} tiles): status {rss['status']}, "
        f"{rss['seconds']:.1f} s, "
        f"API peak RSS {rss['peak_rss_mb']:.0f} MiB (before the request: {rss['peak_rss_before_mb']:.0f} MiB)"
    )
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str) -> None:
    """Replace (or append) the serve section of docs/BENCHMARKS.md."""
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def ratios(serving: dict[str, Any]) -> dict[str, str]:
    """Throughput of batching vs none at the highest concurrency; Redis vs embedded p50 at concurrency 1."""
    out: dict[str, str] = {}
    off, emb, red = serving.get("batching_off"), serving.get("embedded"), serving.get("redis_1_worker")
    if isinstance(off, list) and isinstance(emb, list):
        out[f"embedded batching / batching off throughput at concurrency {emb[-1]['concurrency']}"] = (
            f"{emb[-1]['throughput_rps'] / off[-1]['throughput_rps']:.2f}x (target >= 1.3x)"
        )
    if isinstance(emb, list) and isinstance(red, list):
        out["Redis p50 - embedded p50 at concurrency 1, rows above (modes run one after another)"] = (
            f"{red[0]['p50_ms'] - emb[0]['p50_ms']:+.1f} ms"
        )
    den = serving.get("embedded_denoise")
    if isinstance(emb, list) and isinstance(den, list):
        out["mode=denoise vs mode=full (embedded), p50 at concurrency 1 and throughput at the highest"] = (
            f"{den[0]['p50_ms']:.0f} vs {emb[0]['p50_ms']:.0f} ms, "
            f"{den[-1]['throughput_rps'] / emb[-1]['throughput_rps']:.2f}x (no target)"
        )
    den_off = serving.get("batching_off_denoise")
    if isinstance(den, list) and isinstance(den_off, list):
        out[
            "mode=denoise (the default mode): embedded batching / batching off throughput at concurrency "
            f"{den[-1]['concurrency']}"
        ] = f"{den[-1]['throughput_rps'] / den_off[-1]['throughput_rps']:.2f}x (the target is set for full)"
    return out


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
        "command": "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
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
        write_doc(markdown(result))
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
