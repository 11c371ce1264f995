"""Render the Grafana dashboard's queries from real /metrics scrapes of a locally running stack.

Grafana and Prometheus do not run on the build machines, so this script plays both parts on loopback: it
starts the compose topology without containers (a throwaway ``redis-server`` with append-only persistence,
``dir-serve --queue redis://...`` and two ``dir-worker --metrics-port`` processes), drives a short bounded
load of real images at it, scrapes every target's /metrics like Prometheus does, scales out to a third
worker, SIGKILLs one mid-run (so its pending jobs are redelivered), then evaluates each dashboard panel's
query on the scrapes and plots the panels in the dashboard's order and titles.

    python docker/render_dashboard.py --model-store STORE --images DIR --out docs/img/deploy_dashboard.png
"""

from __future__ import annotations

import argparse
import json
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
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.redis_queue import GROUP, stream_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "dir-isp.json"
BIN = Path(sys.executable).parent
SeriesKey = tuple[str, str, frozenset[tuple[str, str]]]  # target, sample name, labels


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


@dataclass
class Scrapes:
    """Time series of every scraped sample, keyed by (target, sample name, labels)."""

    times: list[float] = field(default_factory=list)
    values: list[dict[SeriesKey, float]] = field(default_factory=list)

    def add(self, t: float, targets: dict[str, str]) -> None:
        snapshot: dict[SeriesKey, float] = {}
        for target, url in targets.items():
            try:
                text = httpx.get(url, timeout=2.0).text
            except httpx.HTTPError:
                continue  # a dead target has no samples, as in Prometheus
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    snapshot[(target, s.name, frozenset(s.labels.items()))] = float(s.value)
        self.times.append(t)
        self.values.append(snapshot)

    def _select(self, i: int, name: str, match: Callable[[dict[str, str]], bool]) -> dict[SeriesKey, float]:
        return {k: v for k, v in self.values[i].items() if k[1] == name and match(dict(k[2]))}

    def rate(
        self, i: int, window: float, name: str, by: tuple[str, ...], match: Callable[[dict[str, str]], bool]
    ) -> dict[tuple[str, ...], float]:
        """``sum by (by) (rate(name[window]))`` at scrape ``i``.

        Per series, from its first sample inside the window (series born inside it count from there), with
        counter resets (a restarted target) handled as Prometheus does.
        """
        first = i
        while first > 0 and self.times[i] - self.times[first - 1] <= window:
            first -= 1
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for key in self._select(i, name, match):
            start = next((k for k in range(first, i) if key in self.values[k]), None)
            if start is None:
                continue
            delta, previous = 0.0, self.values[start][key]
            for k in range(start + 1, i + 1):
                current = self.values[k].get(key, previous)
                delta += current - previous if current >= previous else current
                previous = current
            labels = dict(key[2])
            out[tuple(labels.get(b, "") for b in by)] += delta / (self.times[i] - self.times[start])
        return dict(out)

    def gauge_max(self, i: int, name: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """``max by (by) (name)`` at scrape ``i``."""
        out: dict[tuple[str, ...], float] = {}
        for key, value in self._select(i, name, lambda _l: True).items():
            group = tuple(dict(key[2]).get(b, "") for b in by)
            out[group] = max(out.get(group, value), value)
        return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket rates keyed by upper bound ``le``."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return bounds[-2] if len(bounds) > 1 else None
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return None


def _quantiles(
    scrapes: Scrapes, i: int, metric: str, by: str, window: float, match: Callable[[dict[str, str]], bool]
) -> dict[str, float]:
    rates = scrapes.rate(i, window, metric + "_bucket", (by, "le"), match)
    grouped: dict[str, dict[float, float]] = defaultdict(dict)
    for (group, le), rate in rates.items():
        grouped[group][float(le)] = rate
    out: dict[str, float] = {}
    for group, buckets in grouped.items():
        for q in (0.5, 0.95, 0.99):
            quantile = histogram_quantile(q, buckets)
            if quantile is not None:
                out[f"{group} p{round(q * 100)}"] = quantile
    return out


def evaluate(scrapes: Scrapes, window: float) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Each dashboard panel title -> legend -> [(seconds since start, value)]."""
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {t: defaultdict(list) for t in titles}
    every = lambda _l: True  # noqa: E731
    model_api = lambda labels: labels.get("endpoint", "").startswith("/v1/")  # noqa: E731
    errors = lambda labels: labels.get("status", "")[:1] in ("4", "5")  # noqa: E731
    t0 = scrapes.times[0]
    for i, now in enumerate(scrapes.times):
        t = now - t0

        def put(title: str, series: dict[str, float], t: float = t) -> None:
            for legend, value in series.items():
                panels[title][legend].append((t, value))

        req = scrapes.rate(i, window, "dir_request_duration_seconds_count", ("endpoint",), model_api)
        put(titles[0], {k[0]: v for k, v in req.items()})
        put(titles[1], _quantiles(scrapes, i, "dir_request_duration_seconds", "endpoint", window, model_api))
        put(titles[2], _quantiles(scrapes, i, "dir_queue_wait_seconds", "model", window, every))
        put(titles[3], _quantiles(scrapes, i, "dir_compute_seconds", "model", window, every))
        put(titles[5], {k[0]: v for k, v in scrapes.gauge_max(i, "dir_queue_depth", ("model",)).items()})
        errs = scrapes.rate(i, window, "dir_request_duration_seconds_count", ("endpoint", "status"), errors)
        rejected = scrapes.rate(i, window, "dir_rejected_total", ("reason",), every)
        put(
            titles[6],
            {f"{e} {s}": v for (e, s), v in errs.items()}
            | {f"rejected: {r[0]}": v for r, v in rejected.items() if v > 0},
        )
        redeliveries = scrapes.rate(i, 60.0, "dir_redeliveries_total", (), every)
        dead = scrapes.rate(i, 60.0, "dir_dead_letters_total", (), every)
        put(
            titles[7],
            {
                "redeliveries / min": 60 * redeliveries.get((), 0.0),
                "dead letters / min": 60 * dead.get((), 0.0),
            },
        )
    return panels


def batch_histogram(scrapes: Scrapes) -> tuple[dict[str, float], float]:
    """Batches per batch-size bucket over the whole run (``increase(dir_batch_size_bucket[$__range])``,
    de-cumulated as Grafana's heatmap format does) and the mean batch size."""
    last = len(scrapes.times) - 1
    span = scrapes.times[last] - scrapes.times[0]
    every = lambda _l: True  # noqa: E731
    rates = scrapes.rate(last, span, "dir_batch_size_bucket", ("le",), every)
    cumulative = {float(k[0]): v * span for k, v in rates.items()}
    counts: dict[str, float] = {}
    below, previous = 0.0, 0.0
    for le in sorted(cumulative):
        label = f">{previous:g}" if le == float("inf") else f"\u2264{le:g}"
        counts[label] = cumulative[le] - below
        below, previous = cumulative[le], le
    total = scrapes.rate(last, span, "dir_batch_size_count", (), every).get((), 0.0)
    mean = scrapes.rate(last, span, "dir_batch_size_sum", (), every).get((), 0.0) / total if total else 0.0
    return counts, mean


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


def run(args: argparse.Namespace) -> None:
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"no images under {args.images}")
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed")
    work = Path(tempfile.mkdtemp(prefix="dir-dashboard-"))
    redis_port, api_port = _free_port(), _free_port()
    queue = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "DIR_MODEL_STORE": str(args.model_store.resolve()),
        "DIR_QUEUE": queue,
        "DIR_CLAIM_IDLE_MS": "3000",
        "DIR_INTRA_OP_THREADS": "1",
        "DIR_PROVIDERS": "CPUExecutionProvider",
    }
    scrapes = Scrapes()
    with ExitStack() as stack:
        redis = stack.enter_context(
            _process(
                [
                    redis_bin,
                    "--port",
                    str(redis_port),
                    "--dir",
                    str(work),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
                env,
                work / "redis.log",
            )
        )
        api = stack.enter_context(
            _process(
                [str(BIN / "dir-serve"), "--host", "127.0.0.1", "--port", str(api_port)],
                env,
                work / "api.log",
            )
        )
        base = f"http://127.0.0.1:{api_port}"
        _wait_http(base + "/healthz", api)
        workers: dict[str, subprocess.Popen[bytes]] = {}
        targets = {"api": base + "/metrics"}

        def start_worker(name: str) -> None:
            port = _free_port()
            cmd = [str(BIN / "dir-worker"), "--queue", queue, "--metrics-port", str(port), "--name", name]
            workers[name] = stack.enter_context(_process(cmd, env, work / f"{name}.log"))
            targets[name] = f"http://127.0.0.1:{port}/metrics"
            _wait_http(targets[name], workers[name])

        for name in ("worker-1", "worker-2"):
            start_worker(name)
        _wait_http(base + "/readyz", api)
        listing = httpx.get(base + "/v1/models", timeout=10).json()
        served = " + ".join(str(listing[k]) for k in ("restore", "detect") if listing.get(k))
        held = 0
        stop = threading.Event()
        gate = threading.Semaphore(args.concurrency)
        threads = [
            threading.Thread(target=_load, args=(base, images, stop, gate), daemon=True)
            for _ in range(args.concurrency)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        scaled = killed = False
        while (elapsed := time.monotonic() - started) < args.seconds:
            scrapes.add(time.monotonic(), targets)
            if not scaled and elapsed >= args.seconds / 3:
                start_worker("worker-3")  # scale out while loaded
                scaled = True
            if not killed and elapsed >= args.seconds / 2:
                # mid-batch death: live workers reclaim its pending jobs once idle for DIR_CLAIM_IDLE_MS
                held = _kill_mid_batch(workers["worker-1"], queue, listing["restore"], "worker-1")
                targets.pop("worker-1")
                killed = True
            time.sleep(args.interval)
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        scrapes.add(time.monotonic(), targets)
        if redis.poll() is not None:
            raise RuntimeError("redis-server died during the run")
    shutil.rmtree(work, ignore_errors=True)
    note = (
        f"{len(scrapes.times)} scrapes every {args.interval:g} s of dir-serve + 2 dir-workers on redis "
        f"(a third added at {args.seconds / 3:.0f} s, one SIGKILLed holding {held} jobs "
        f"at {args.seconds / 2:.0f} s); {args.concurrency} client threads; models {served}; "
        f"rate window {args.window:g} s"
    )
    plot(evaluate(scrapes, args.window), batch_histogram(scrapes), args.out, note)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


def main() -> None:
    """Entry point: ``python docker/render_dashboard.py --model-store DIR --images DIR --out PNG``."""
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
