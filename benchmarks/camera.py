"""Camera-sized images: one 12 MP JPEG (a bsds500_train photo upscaled to 4000x3000) through ``dir-serve`` in
the default restore mode, synchronously (``/v1/restore``) and as a job (``/v1/jobs/restore``), with the API
process's wall time, idle RSS, peak RSS and RSS one second after.

Variants, each a fresh ``dir-serve`` (embedded queue, the shipped model): ``before`` runs the service of
``--base-rev`` (exported with ``git archive`` into a temporary directory, first on PYTHONPATH; it has no
jobs), ``after`` this tree, ``after, arena off`` this tree with ``DIR_ORT_CPU_ARENA=false`` (``--arena-off``),
and this tree with ``DIR_TILE_SIZES`` (``--tile-sizes``); ``--full-job`` adds the 12 MP image as a
``?mode=full`` job to ``after``; each server also gives the median 512 px round trip. The peak is
``VmHWM``, reset before each request (``/proc/<pid>/clear_refs``), so it is the peak of that request alone.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.camera             # prints JSON
    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.camera --base-rev e867151 --arena-off --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks.common import cpu_model, free_port, jpeg_bytes, wait_ready, write_section
from benchmarks.memory import status_mib
from service.settings import DEFAULT_MODEL_STORE
from training.paths import data_root

REPO = Path(__file__).resolve().parents[1]
SECTION_END = "<!-- end: benchmarks/camera.py -->"
SERVE = "import sys; from service.cli import serve; serve(sys.argv[1:])"


def camera_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """The first bsds500_train photo (sorted by name) upscaled (bicubic) to ``width x height``, JPEG q92."""
    folder = data_root() / "bsds500_train"
    photo = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[0]
    return jpeg_bytes(Image.open(photo).resize((width, height), Image.Resampling.BICUBIC), quality=92)


def reset_peak(pid: int) -> None:
    """Reset ``pid``'s VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def export_tree(rev: str, into: Path) -> Path:
    """The repository's tracked files at ``rev`` under ``into`` (``git archive``; no worktree is made)."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _after(pid: int, started: float, response: httpx.Response) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    memory = status_mib(pid)
    return {
        "status": response.status_code,
        "seconds": round(seconds, 1),
        "peak_mib": round(memory["VmHWM"]),
        "rss_after_mib": round(memory["VmRSS"]),
    }


def sync_request(base: str, pid: int, body: bytes) -> tuple[dict[str, Any], bytes]:
    """One synchronous restore: its row and its body."""
    reset_peak(pid)
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/restore?format=png", content=body, timeout=1800)
    return {"tiles": response.headers.get("x-tiles"), **_after(pid, started, response)}, response.content


def job_request(base: str, pid: int, body: bytes, mode: str = "") -> tuple[dict[str, Any], bytes]:
    """One job (restore ``mode``, default: the server's): submit, poll every 0.5 s, fetch the result; its
    row (with the job's timings) and body."""
    reset_peak(pid)
    started = time.perf_counter()
    query = f"format=png&mode={mode}" if mode else "format=png"
    job = httpx.post(f"{base}/v1/jobs/restore?{query}", content=body, timeout=600).json()
    status = job
    while status["state"] in ("queued", "running"):
        time.sleep(0.5)
        status = httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=60).json()
    response = httpx.get(f"{base}/v1/jobs/{job['id']}/result", timeout=600)
    row = {"tiles": f"{status['tiles_done']}/{status['tiles_total']}", **_after(pid, started, response)}
    return {**row, "timings": status["timings"]}, response.content


def small_round_trips(base: str, body: bytes, repeats: int = 7) -> float:
    """Median seconds of ``repeats`` sequential ``/v1/restore`` round trips of ``body`` (concurrency 1)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        httpx.post(f"{base}/v1/restore", content=body, timeout=600).raise_for_status()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds), 3)


def measure(env: dict[str, str], body: bytes, small: bytes, jobs: bool, full: bool = False) -> dict[str, Any]:
    """A fresh server: idle RSS after one small request, the median 512 px round trip, then the 12 MP
    request sync (and as a job; and as a ``full``-mode job when ``full``)."""
    port = free_port()
    # Run from the tree itself: ``python -c`` puts the working directory before PYTHONPATH on sys.path.
    api = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=env["PYTHONPATH"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api, timeout_s=600)
        httpx.post(f"{base}/v1/restore", content=small, timeout=600).raise_for_status()
        row: dict[str, Any] = {"idle_rss_mib": round(status_mib(api.pid)["VmRSS"])}
        row["s_512px"] = small_round_trips(base, camera_jpeg(512, 512))
        row["sync"], sync_body = sync_request(base, api.pid, body)
        if jobs:
            row["job"], job_body = job_request(base, api.pid, body)
            row["job_equals_sync"] = job_body == sync_body
        if full:
            row["job, mode=full"], _ = job_request(base, api.pid, body, "full")
        return row
    finally:
        api.terminate()
        api.wait(timeout=60)


def markdown(result: dict[str, Any]) -> str:
    """The docs/BENCHMARKS.md section."""
    lines = [
        "## Camera-sized images (`benchmarks/camera.py`)",
        "",
        f"{result['image']}, default restore mode, embedded queue, {result['model']}; {result['machine']}; "
        f"{result['date']}, load average {result['load']} at the start. `{result['command']}`. Peak: VmHWM "
        "of the API process during that request. 512 px s: median of 7 sequential 512x512 JPEG round trips.",
        "",
        "| variant | request | status | tiles | wall s | idle RSS | peak RSS | RSS 1 s after | 512 px s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        for kind in ("sync", "job", "job, mode=full"):
            if kind in row:
                r = row[kind]
                lines.append(
                    f"| {name} | {kind} | {r['status']} | {r['tiles']} | {r['seconds']} | "
                    f"{row['idle_rss_mib']} MiB | {r['peak_mib']} MiB | {r['rss_after_mib']} MiB | "
                    f"{row.get('s_512px', '-')} |"
                )
    equal = [name for name, row in result["rows"].items() if row.get("job_equals_sync")]
    lines += ["", f"Job result byte-identical to the sync answer: {', '.join(equal) or 'none'}.", SECTION_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-rev", default="", help="git revision of the 'before' variant (none: skip it)")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument(
        "--arena-off", action="store_true", help="also run this tree with DIR_ORT_CPU_ARENA=false"
    )
    parser.add_argument(
        "--tile-sizes",
        default="",
        help="also run this tree with DIR_TILE_SIZES set to this list, e.g. 256,512,1024",
    )
    parser.add_argument(
        "--full-job", action="store_true", help="also run the 12 MP image as a ?mode=full job"
    )
    parser.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    body, small = camera_jpeg(), camera_jpeg(320, 240)
    env = {
        "DIR_MODEL_STORE": str(args.model_store.resolve()),
        "DIR_REQUEST_TIMEOUT_S": "1800",  # the same fixed, ample deadline for every variant
        "DIR_REQUEST_TIMEOUT_PER_MP_S": "0",
    }
    rows: dict[str, Any] = {}
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        if args.base_rev:
            tree = export_tree(args.base_rev, Path(tmp))
            rows[f"before ({args.base_rev[:8]})"] = measure(
                {**env, "PYTHONPATH": str(tree)}, body, small, False
            )
        rows["after"] = measure({**env, "PYTHONPATH": str(REPO)}, body, small, True, args.full_job)
        if args.arena_off:
            arena_off = {**env, "PYTHONPATH": str(REPO), "DIR_ORT_CPU_ARENA": "false"}
            rows["after, DIR_ORT_CPU_ARENA=false"] = measure(arena_off, body, small, True)
        if args.tile_sizes:
            tiles = {**env, "PYTHONPATH": str(REPO), "DIR_TILE_SIZES": args.tile_sizes}
            rows[f"after, DIR_TILE_SIZES={args.tile_sizes}"] = measure(tiles, body, small, True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "image": f"4000x3000 JPEG ({len(body)} bytes, bsds500_train photo upscaled)",
        "model": str(args.model_store.name) + "/dir-restore (highest version)",
        "machine": f"{os.cpu_count()} x {cpu_model()}",
        "load": load,
        "command": "PYTHONPATH=$PWD .venv/bin/python -m benchmarks.camera "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.write:
        write_section(markdown(result))


if __name__ == "__main__":
    main()
