"""Service fixtures: a model store with a tiny exported model, a real Redis, an in-process app client.

Redis: 127.0.0.1:6379 when it answers; otherwise a throwaway ``redis-server`` on a free port (no
persistence, killed at session end); otherwise Redis tests skip with the reason. Never a mock.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from modelstore.errors import ModelStoreError
from modelstore.store import ModelEntry, resolve_entry
from service.api.app import create_app
from service.settings import DEFAULT_MODEL_STORE, Settings

REPO = Path(__file__).resolve().parents[2]


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis_server(port: int) -> subprocess.Popen[bytes]:
    """A throwaway ``redis-server`` on ``port`` (no RDB, no AOF); waits until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis answers on 127.0.0.1:6379 and no redis-server binary is installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if _answers(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.skip(f"redis-server did not answer on port {port}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: the local one on 6379, or a throwaway server started for this session."""
    if _answers(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    port = free_port()
    proc = start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix for one test; every key under it is deleted afterwards."""
    value = f"dirtest-{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(redis_url)
    with contextlib.suppress(redis.RedisError):
        for key in client.scan_iter(f"{value}:*"):
            client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def detector_store(fixture_store: Path, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The fixture store plus a ``yolo-fastestv2`` entry built with ``install_yolo_fastestv2``."""
    from training.detect.install import install_yolo_fastestv2

    weights = shared_data / "yolo_fastestv2" / "modelzoo" / "coco2017-0.241078ap-model.pth"
    if not weights.is_file():
        pytest.skip(f"Yolo-FastestV2 weights are absent at {weights}")
    store = tmp_path_factory.mktemp("detect_store")
    shutil.copytree(fixture_store, store, dirs_exist_ok=True)
    install_yolo_fastestv2(weights, store)
    return store


@pytest.fixture(scope="session")
def served_entry(fixture_store: Path) -> ModelEntry:
    """The committed default restoration entry (``model_store/dir-restore/<highest>``) when the repository
    has one, else the fixture entry: endpoint tests run on what ``make serve`` serves."""
    try:
        return resolve_entry(DEFAULT_MODEL_STORE, "dir-restore", "restore")
    except ModelStoreError:
        return resolve_entry(fixture_store, "dir-restore", "restore")


@pytest.fixture
def make_settings(fixture_store: Path) -> Callable[..., Settings]:
    """Factory: ``Settings`` on the fixture store, one ORT thread, no detector, requests without a mode run
    ``full`` (the two-pass DiR path most tests are about; tests/service/test_modes.py covers the default
    mode), deadlines fixed at ``DIR_REQUEST_TIMEOUT_S`` (tests/service/test_jobs.py covers their scaling);
    keywords override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_store": fixture_store,
            "intra_op_threads": 1,
            "detect_model": "no-such-detector",
            "restore_mode": "full",
            "request_timeout_per_mp_s": 0.0,  # a fixed deadline, unless a test is about its scaling
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def redis_settings(
    make_settings: Callable[..., Settings], redis_url: str, prefix: str
) -> Callable[..., Settings]:
    """Factory: :func:`make_settings` on the Redis queue under this test's key prefix; keywords override."""

    def make(**overrides: Any) -> Settings:
        return make_settings(queue=redis_url, stream_prefix=prefix, **overrides)

    return make


@pytest.fixture
def api_settings(make_settings: Callable[..., Settings], served_entry: ModelEntry) -> Callable[..., Settings]:
    """Factory: like ``make_settings`` but on the store of ``served_entry`` (the committed model if any)."""

    def make(**overrides: Any) -> Settings:
        return make_settings(
            model_store=served_entry.path.parent.parent, restore_model=served_entry.ref, **overrides
        )

    return make


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an in-process httpx client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def restore_latencies(client: httpx.AsyncClient, body: bytes, n: int = 5) -> list[float]:
    """Seconds of ``n`` restores of ``body``, one after another; each must answer 200."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        assert (await client.post("/v1/restore", content=body)).status_code == 200
        latencies.append(time.perf_counter() - started)
    return latencies


def image_bytes(path: Path, fmt: str | None = None, **save: Any) -> bytes:
    """File bytes, or the image re-encoded as ``fmt`` (e.g. "WEBP") with PIL save options."""
    if fmt is None:
        return path.read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk (length, type, data, CRC32), for hand-built PNG headers in error tests."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def header_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB (its pixel data: one tiny zlib stream), for admission
    and error tests: it is refused from its header or found truncated when decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def claimed_jpeg(width: int, height: int) -> bytes:
    """A real 16x8 baseline JPEG (about 600 bytes) whose SOF0 marker is rewritten to claim ``width x height``
    (up to 65535 each); Pillow decodes it at the claimed size (the missing scans come out grey)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (90, 120, 200)).save(buffer, format="JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def restore_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a ``POST /v1/restore`` with ``headers``, for tests that drive the app directly."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/restore",
        "raw_path": b"/v1/restore",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }


def noise_png(height: int, width: int, seed: int = 0) -> bytes:
    """A ``height x width`` RGB PNG of uniform random pixels (seeded), fast to encode."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
