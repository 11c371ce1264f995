"""API process memory around one large request: resident size before, at its peak, and after, with the heap
trim after large requests (``service/memory.py``) on and off, and with ONNX Runtime's CPU memory arena off
(``DIR_ORT_CPU_ARENA=false``).

Starts a real ``dir-serve`` (embedded queue) per variant, serves a few small requests, then one large JPEG
(default 2000x1500, ``?mode=full``), then the small ones again, reading ``/proc/<pid>/status``: VmRSS (now)
and VmHWM (peak). "trim on" is the default threshold; "trim off" starts the same server with the threshold set
beyond any request.

    .venv/bin/python -m benchmarks.memory                      # prints a Markdown table
    .venv/bin/python -m benchmarks.memory --size 4000x3000 --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import wait_ready
from service.memory import TRIM_ABOVE_PIXELS
from service.settings import DEFAULT_MODEL_STORE

#: Starts ``dir-serve`` with the trim threshold of ``service.memory`` replaced (``sys.argv[1]``).
SERVE = (
    "import sys; import service.memory as m; m.TRIM_ABOVE_PIXELS = int(sys.argv[1]); "
    "from service.cli import serve; serve(sys.argv[2:])"
)


def status_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A ``width x height`` JPEG with smooth structure and noise (so tiles are not trivially uniform)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None] * np.array(
        [1.0, 0.7, 0.4]
    )
    noisy = np.clip(base + rng.normal(0, 0.05, (height, width, 3)), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((noisy * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@contextmanager
def api(env: dict[str, str], trim_above: int, port: int) -> Iterator[tuple[str, int]]:
    """A ``dir-serve`` process; yields (base URL, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(trim_above), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def measure(
    env: dict[str, str], trim_above: int, port: int, large: bytes, small: bytes, batch: bytes
) -> dict[str, Any]:
    """RSS around one large request on a fresh server, after small requests and one that fills whole batches
    (so the model's per-call buffers have reached their size before "before" is read)."""
    with api(env, trim_above, port) as (base, pid):
        for body in (small, small, batch):
            httpx.post(f"{base}/v1/restore?mode=full", content=body, timeout=600).raise_for_status()
        before = status_mib(pid)["VmRSS"]
        started = time.perf_counter()
        response = httpx.post(f"{base}/v1/restore?mode=full", content=large, timeout=1800)
        seconds = time.perf_counter() - started
        time.sleep(1.0)
        after = status_mib(pid)
        for _ in range(3):
            httpx.post(f"{base}/v1/restore?mode=full", content=small, timeout=300).raise_for_status()
        settled = status_mib(pid)["VmRSS"]
    return {
        "status": response.status_code,
        "tiles": int(response.headers.get("x-tiles", 0)),
        "seconds": round(seconds, 1),
        "rss_before_mib": round(before),
        "peak_mib": round(after["VmHWM"]),
        "rss_after_mib": round(after["VmRSS"]),
        "rss_after_3_small_mib": round(settled),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="2000x1500", help="large image WIDTHxHEIGHT (default 2000x1500)")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    env = {
        "DIR_MODEL_STORE": str(args.model_store),
        "DIR_REQUEST_TIMEOUT_S": "1800",
        "DIR_QUEUE_BOUND": "100000",
        "DIR_MAX_COST_PIXELS": str(10**12),
    }
    large, small, batch = photo_jpeg(width, height), photo_jpeg(320, 240, 1), photo_jpeg(800, 600, 2)
    variants = {
        "trim on (default)": (TRIM_ABOVE_PIXELS, "true"),
        "trim off": (2**62, "true"),
        "trim on, DIR_ORT_CPU_ARENA=false": (TRIM_ABOVE_PIXELS, "false"),
    }
    rows = {
        name: measure({**env, "DIR_ORT_CPU_ARENA": arena}, trim, args.port + k, large, small, batch)
        for k, (name, (trim, arena)) in enumerate(variants.items())
    }
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "large": f"{width}x{height} JPEG ({len(large)} bytes), mode=full",
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['large']}, {result['cpus']} CPUs, {result['date']}\n")
    print("| variant | status | tiles | s | RSS before | peak | RSS 1 s after | after 3 small |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['status']} | {r['tiles']} | {r['seconds']} | {r['rss_before_mib']} MiB | "
            f"{r['peak_mib']} MiB | {r['rss_after_mib']} MiB | {r['rss_after_3_small_mib']} MiB |"
        )


if __name__ == "__main__":
    main()
