"""The console scripts as real processes: ``dir-serve`` answers over TCP; ``dir-worker`` needs a Redis URL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.service.conftest import free_port


def run_script(func: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    code = f"import sys; from service.cli import {func}; {func}(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_dir_serve_answers(fixture_store: Path, dataset: Callable[[str], Path]) -> None:
    port = free_port()
    proc = run_script(
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-store",
        str(fixture_store),
        env={"DIR_INTRA_OP_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.1)
        photo = dataset("rni15") / "Dog.png"
        response = httpx.post(f"{base}/v1/restore?format=jpeg", content=photo.read_bytes(), timeout=60)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dir_worker_requires_redis(fixture_store: Path) -> None:
    proc = run_script("worker", "--model-store", str(fixture_store), env={"DIR_QUEUE": "embedded"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"needs a Redis queue" in out


def test_dir_worker_warms_up_before_it_connects(fixture_store: Path) -> None:
    """The worker runs its start-up pass before it touches Redis: a tile side the model cannot run stops it
    with exit status 2 and a message naming the side (the unreachable queue is never reached)."""
    env = {
        "DIR_QUEUE": "redis://127.0.0.1:1/0",
        "DIR_TILE_SIZES": "62",
        "DIR_INTRA_OP_THREADS": "1",
        "DIR_WARMUP": "on",
    }
    proc = run_script("worker", "--model-store", str(fixture_store), env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out.decode()
    assert b"failed its start-up run with tiles of (62,) px" in out
