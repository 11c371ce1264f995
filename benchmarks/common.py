"""What the benchmarks share: the machine's description, free ports, ``dir-serve``/``dir-worker``
subprocesses and their readiness, peak RSS, JPEG bodies, the docs/BENCHMARKS.md section writer and the ISP
benchmarks' arguments."""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's description)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def redis_reachable(url: str) -> bool:
    """Whether ``url`` answers PING."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def write_section(section: str, doc: Path = DOC) -> None:
    """Replace the section in ``doc`` between its own first and last lines (its markers); append if absent."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = section.splitlines()[0], section.splitlines()[-1]
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def add_isp_arguments(parser: argparse.ArgumentParser, device: str, batch: int, size: int) -> None:
    """``--device``, ``--batch``, ``--size`` and ``--preset`` of the ISP benchmarks, with these defaults."""
    parser.add_argument("--device", default=device, help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--preset", default="ablation")


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit with a usage error when ``device`` asks for CUDA and none is available."""
    import torch  # optional: torch, only the ISP benchmarks call this

    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA device is available")
