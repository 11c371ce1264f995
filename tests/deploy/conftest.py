"""Deployment-test helpers: run an ASGI app under a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


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
