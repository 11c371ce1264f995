"""The uvicorn layer ``dir-serve`` runs (service/server.py) on a real loopback server: request-head timeout
and connection limit with a trivial ASGI app (the limits sit below the app), and an aborted upload to the
service app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from service.api.app import create_app
from service.server import uvicorn_config
from service.settings import Settings
from tests.service.conftest import free_port


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/slow`` answers after 1 s, everything else at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def running(app: Any = slow_app, settings: Settings | None = None, **limits: Any) -> Iterator[int]:
    """A uvicorn server with ``app`` (default ``slow_app``) and ``settings`` (default: ``limits``) on a
    free loopback port (the settings' port when given)."""
    settings = settings or Settings(host="127.0.0.1", port=free_port(), **limits)
    server = uvicorn.Server(uvicorn_config(app, settings, "info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    try:
        yield settings.port
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    """A loopback client socket to ``port``."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def request(sock: socket.socket, path: str) -> bytes:
    """Send ``GET path`` (keep-alive) and read one response (headers and body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_request_head_is_cut_but_slow_answers_are_not() -> None:
    with running(header_timeout_s=0.3) as port:
        trickle = connect(port)
        trickle.sendall(b"GET /fast HTTP/1.1\r\nHo")
        idle = connect(port)
        slow = connect(port)
        answer = request(slow, "/slow")  # the app takes 1 s, longer than the head timeout
        again = request(slow, "/fast")  # and the connection still serves the next request
        assert closed_within(trickle, 5) and closed_within(idle, 5)
        after_response = connect(port)
        assert request(after_response, "/fast").startswith(b"HTTP/1.1 200")
        after_response.sendall(b"GET /fast HTTP/1.1\r\n")  # next head, never finished
        assert closed_within(after_response, 5)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert again.startswith(b"HTTP/1.1 200")


def test_connections_over_the_limit_get_503_in_the_error_shape() -> None:
    with running(max_connections=2, header_timeout_s=30, retry_after_s=3) as port:
        held = [connect(port), connect(port)]
        extra = connect(port)
        refused = request(extra, "/fast")
        health = request(connect(port), "/healthz")
        for sock in held:
            sock.close()
        time.sleep(0.2)
        served = request(connect(port), "/fast")
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 3" in head.lower() and b"connection: close" in head.lower()
    error = json.loads(body)
    assert error["error"] == "unavailable" and "DIR_MAX_CONNECTIONS" in error["message"]
    assert health.startswith(b"HTTP/1.1 200")
    assert served.startswith(b"HTTP/1.1 200")


def test_aborted_upload_is_one_log_line_under_uvicorn(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends 1 KB of a 100 KB body and disconnects: one line from the service, no traceback
    from uvicorn ("Exception in ASGI application")."""
    caplog.set_level(logging.INFO)
    settings = make_settings(host="127.0.0.1", port=free_port())
    uvicorn_errors: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = uvicorn_errors.append  # type: ignore[method-assign]
    with running(create_app(settings), settings) as port:
        logging.getLogger("uvicorn.error").addHandler(handler)
        try:
            sock = connect(port)
            head = b"POST /v1/restore HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
            sock.sendall(head + b"\x89PNG" + b"\0" * 1020)
            time.sleep(0.5)
            sock.close()
            for _ in range(100):
                if any("disconnected" in r.getMessage() for r in caplog.records):
                    break
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            logging.getLogger("uvicorn.error").removeHandler(handler)
    lines = [r.getMessage() for r in caplog.records if "disconnected after" in r.getMessage()]
    assert len(lines) == 1 and "after 1024 bytes" in lines[0]
    assert not [r for r in uvicorn_errors if r.exc_info or r.levelno >= logging.ERROR]
