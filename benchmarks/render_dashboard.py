"""Render the Grafana dashboard's queries from real /metrics scrapes of a locally running stack.

Grafana and Prometheus do not run on the build machines, so this script plays both parts on loopback: it
starts the compose topology without containers (a throwaway ``redis-server`` with append-only persistence,
``dir-serve --queue redis://...`` and two ``dir-worker --metrics-port`` processes), drives a short bounded
load of real images at it, scrapes every target's /metrics like Prometheus does, scales out to a third
worker, SIGKILLs one mid-run (so its pending jobs are redelivered), then evaluates each dashboard panel's
query on the scrapes and plots the panels in the dashboard's order and titles.

    python -m benchmarks.render_dashboard --model-store STORE --images DIR --out docs/img/deploy_dashboard.png
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import redis

from benchmarks.dashboard_queries import Scrapes, batch_histogram, evaluate
from service.redis_queue import GROUP, stream_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], attempts: int = 600) -> None:
    """Poll ``url`` (bounded) until it answers 2xx; fail early when ``proc`` died."""
    for _ in range(attempts):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _kill_mid_batch(proc: subprocess.Popen[bytes], queue: str, model_ref: str, consumer: str) -> int:
    """SIGKILL a worker while it holds unacknowledged jobs; returns how many it held.

    The worker is frozen (SIGSTOP) at a random point; if it holds no pending job there it is resumed and
    tried again (bounded), so the kill always lands mid-batch.
    """
    client = redis.Redis.from_url(queue)
    try:
        held: Any = []
        for _ in range(200):
            proc.send_signal(signal.SIGSTOP)
            held = [
                job
                for urgent in (False, True)
                for job in client.xpending_range(
                    stream_key("dir", model_ref, urgent), GROUP, "-", "+", 64, consumer
                )
            ]
            if held:
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        return len(held)
    finally:
        client.close()


def plot(
    panels: dict[str, dict[str, list[tuple[float, float]]]],
    batches: tuple[dict[str, float], float],
    out: Path,
    note: str,
) -> None:
    """Eight panels in the dashboard's 2-column layout; the batch-size panel as bars over the whole run."""
    units = ["req/s", "seconds", "seconds", "seconds", "batches", "tiles", "req/s", "per min"]
    fig, axes = plt.subplots(4, 2, figsize=(13, 13), dpi=72)
    for index, (ax, (title, series), unit) in enumerate(zip(axes.flat, panels.items(), units, strict=True)):
        if index == 4:
            counts, mean = batches
            ax.bar(list(counts), list(counts.values()), color="#4c78a8")
            ax.set_title(f"{title} (whole run; mean {mean:.2f} tiles/batch)", fontsize=11, loc="left")
            ax.set_xlabel("tiles per batch (bucket)", fontsize=9)
            ax.set_ylabel(unit, fontsize=9)
            ax.grid(alpha=0.3, axis="y")
            continue
        for legend, points in sorted(series.items()):
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linewidth=1.4, label=legend)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(unit, fontsize=9)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        if "p50" in " ".join(series):
            ax.set_yscale("log")
    for index, ax in enumerate(axes.flat):
        if index != 4:
            ax.set_xlabel("seconds since start of the load", fontsize=8)
    fig.suptitle("DiR-ISP dashboard queries on real /metrics scrapes (rendered with matplotlib, not Grafana)")
    fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.015, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)


def _load(base: str, images: list[Path], stop: threading.Event, concurrency: threading.Semaphore) -> None:
    """One client thread: a mix of restore, represent, detect and a few bad bodies, until ``stop``."""
    rng = random.Random(threading.get_ident())
    with httpx.Client(base_url=base, timeout=60.0) as client:
        while not stop.is_set():
            with concurrency:
                pick = rng.random()
                body = images[rng.randrange(len(images))].read_bytes()
                try:
                    if pick < 0.70:
                        client.post("/v1/restore", content=body, headers={"Content-Type": "image/jpeg"})
                    elif pick < 0.85:
                        client.post("/v1/represent", content=body)
                    elif pick < 0.95:
                        client.post("/v1/detect", content=body)
                    else:
                        client.post("/v1/restore", content=b"not an image")
                except httpx.HTTPError:
                    continue


@dataclass
class _Stack:
    """The compose topology of one run on loopback: ``redis-server``, ``dir-serve`` and the workers, each
    process entered in ``stack`` (terminated when it closes); ``targets`` are the /metrics URLs scraped."""

    stack: ExitStack
    env: dict[str, str]
    work: Path
    queue: str
    base: str
    redis: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)

    def start_worker(self, name: str) -> None:
        """Start ``dir-worker`` ``name`` with a metrics port and wait until its /metrics answers."""
        port = _free_port()
        cmd = [str(BIN / "dir-worker"), "--queue", self.queue, "--metrics-port", str(port), "--name", name]
        self.workers[name] = self.stack.enter_context(_process(cmd, self.env, self.work / f"{name}.log"))
        self.targets[name] = f"http://127.0.0.1:{port}/metrics"
        _wait_http(self.targets[name], self.workers[name])


def _start_stack(stack: ExitStack, model_store: Path, redis_bin: str) -> _Stack:
    """A throwaway append-only ``redis-server``, ``dir-serve`` on it and two workers, ready to serve."""
    work = Path(tempfile.mkdtemp(prefix="dir-dashboard-"))
    redis_port, api_port = _free_port(), _free_port()
    queue = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "DIR_MODEL_STORE": str(model_store.resolve()),
        "DIR_QUEUE": queue,
        "DIR_CLAIM_IDLE_MS": "3000",
        "DIR_INTRA_OP_THREADS": "1",
        "DIR_PROVIDERS": "CPUExecutionProvider",
    }
    redis_cmd = [
        redis_bin,
        "--port",
        str(redis_port),
        "--dir",
        str(work),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    redis_proc = stack.enter_context(_process(redis_cmd, env, work / "redis.log"))
    api_cmd = [str(BIN / "dir-serve"), "--host", "127.0.0.1", "--port", str(api_port)]
    api = stack.enter_context(_process(api_cmd, env, work / "api.log"))
    base = f"http://127.0.0.1:{api_port}"
    _wait_http(base + "/healthz", api)
    topology = _Stack(stack, env, work, queue, base, redis_proc, targets={"api": base + "/metrics"})
    for name in ("worker-1", "worker-2"):
        topology.start_worker(name)
    _wait_http(base + "/readyz", api)
    return topology


def _drive(
    args: argparse.Namespace, topology: _Stack, images: list[Path], model_ref: str
) -> tuple[Scrapes, int]:
    """Load the stack for ``args.seconds``, scraping every ``args.interval``; a third worker joins at a third
    of the run and worker-1 is SIGKILLed mid-batch at half. Returns the scrapes and the jobs it held."""
    scrapes = Scrapes()
    held = 0
    stop = threading.Event()
    gate = threading.Semaphore(args.concurrency)
    threads = [
        threading.Thread(target=_load, args=(topology.base, images, stop, gate), daemon=True)
        for _ in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    scaled = killed = False
    while (elapsed := time.monotonic() - started) < args.seconds:
        scrapes.add(time.monotonic(), topology.targets)
        if not scaled and elapsed >= args.seconds / 3:
            topology.start_worker("worker-3")  # scale out while loaded
            scaled = True
        if not killed and elapsed >= args.seconds / 2:
            # mid-batch death: live workers reclaim its pending jobs once idle for DIR_CLAIM_IDLE_MS
            held = _kill_mid_batch(topology.workers["worker-1"], topology.queue, model_ref, "worker-1")
            topology.targets.pop("worker-1")
            killed = True
        time.sleep(args.interval)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    scrapes.add(time.monotonic(), topology.targets)
    return scrapes, held


def run(args: argparse.Namespace) -> None:
    """Start the stack, load and scrape it, then plot the dashboard's queries to ``args.out``."""
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"no images under {args.images}")
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed")
    with ExitStack() as stack:
        topology = _start_stack(stack, args.model_store, redis_bin)
        listing = httpx.get(topology.base + "/v1/models", timeout=10).json()
        served = " + ".join(str(listing[k]) for k in ("restore", "detect") if listing.get(k))
        scrapes, held = _drive(args, topology, images, listing["restore"])
        if topology.redis.poll() is not None:
            raise RuntimeError("redis-server died during the run")
    shutil.rmtree(topology.work, ignore_errors=True)
    note = (
        f"{len(scrapes.times)} scrapes every {args.interval:g} s of dir-serve + 2 dir-workers on redis "
        f"(a third added at {args.seconds / 3:.0f} s, one SIGKILLed holding {held} jobs "
        f"at {args.seconds / 2:.0f} s); {args.concurrency} client threads; models {served}; "
        f"rate window {args.window:g} s"
    )
    plot(evaluate(scrapes, args.window), batch_histogram(scrapes), args.out, note)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


def main() -> None:
    """Entry point: ``python -m benchmarks.render_dashboard --model-store DIR --images DIR --out PNG``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG camera images")
    parser.add_argument("--out", type=Path, default=Path("docs/img/deploy_dashboard.png"))
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the load (bounded)")
    parser.add_argument("--interval", type=float, default=2.0, help="scrape interval")
    parser.add_argument("--window", type=float, default=10.0, help="rate() window")
    parser.add_argument("--concurrency", type=int, default=6)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
