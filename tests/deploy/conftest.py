"""Deployment-test helpers: model stores for the real app, and a real uvicorn server on a loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.settings import Settings
from tests.service.fixture_model import build_entry
from training.detect.install import install_yolo_fastestv2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, ready_path: str = "/healthz") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL once ``ready_path`` answers.

    Startup is polled with a bounded loop of blocking requests (no sleeps); the server is stopped on exit.
    """
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn on port {port} exited during startup")
            if server.started:
                break
            thread.join(timeout=0.05)
        else:
            raise RuntimeError(f"uvicorn on port {port} did not start")
        httpx.get(url + ready_path, timeout=10).raise_for_status()
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def detector_store(tmp_path_factory: pytest.TempPathFactory, dataset: Callable[[str], Path]) -> Path:
    """The stand-in restoration entry plus Yolo-FastestV2 installed from the shared weights (as
    ``dir-models add-detector`` does); skips where the weights are absent."""
    weights = sorted(dataset("yolo_fastestv2").glob("modelzoo/*.pth"))
    if not weights:
        pytest.skip("no Yolo-FastestV2 .pth under yolo_fastestv2/modelzoo")
    store = tmp_path_factory.mktemp("store-detect")
    build_entry(store)
    install_yolo_fastestv2(weights[0], store)
    return store


@pytest.fixture(scope="session")
def sample_jpeg(dataset: Callable[[str], Path]) -> Path:
    """A real camera JPEG with people in it (yolo_fastestv2/img/000139.jpg)."""
    path = dataset("yolo_fastestv2") / "img" / "000139.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def app_for(store: Path) -> FastAPI:
    """The real service app on ``store``, embedded queue, CPU."""
    return create_app(Settings(model_store=store, queue="embedded", providers="CPUExecutionProvider"))
