"""How ``dir-serve`` runs the app under uvicorn, with limits against slow and excess connections.

Uvicorn alone times out only idle keep-alive connections: a client that sends its request head a byte at a
time holds its connection (and a file descriptor) forever, and it has no connection limit that answers in
the service's error shape. :func:`protocol_class` adds both to uvicorn's h11 protocol:

- ``DIR_HEADER_TIMEOUT_S``: a connection whose request line and headers are not complete this long after it
  opened (or after its previous response) is closed;
- ``DIR_MAX_CONNECTIONS``: while more connections are open, requests other than ``/healthz`` get 503
  ``{"error": "unavailable", ...}`` with ``Retry-After`` and ``Connection: close``.

``DIR_KEEP_ALIVE_S`` is uvicorn's keep-alive timeout; the body's size and arrival time are bounded where it is
read (``DIR_MAX_BODY_BYTES``, ``DIR_BODY_TIMEOUT_S``, :func:`service.http.read_image_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

log = logging.getLogger("dir.service")
#: Paths served whatever the connection count (liveness probes must not fail under a connection flood).
UNLIMITED_PATHS = ("/healthz",)


class GuardedH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol with a request-head timeout and a connection limit (class attributes, set by
    :func:`protocol_class`)."""

    max_connections = 0
    header_timeout_s = 10.0
    retry_after_s = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_cycle: object = None
        self.app = self._limited(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection and start the request-head timer."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer, then let uvicorn clean up."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """After a response, the next request head must arrive within the timeout too (unless a pipelined
        request has already started)."""
        previous = self.cycle
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle is previous:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._armed_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if self.cycle is self._armed_cycle and waiting and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.info(
                "closed connection from %s: no complete request head within %g s", peer, self.header_timeout_s
            )
            self.transport.close()

    def _limited(self, app: Any) -> Any:
        """``app`` behind the connection limit."""

        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            over = self.max_connections and len(self.connections) > self.max_connections
            if over and scope["type"] == "http" and scope["path"] not in UNLIMITED_PATHS:
                await _over_limit(send, len(self.connections), self.max_connections, self.retry_after_s)
                return
            await app(scope, receive, send)

        return guarded


async def _over_limit(send: Any, open_now: int, limit: int, retry_after_s: int) -> None:
    body = json.dumps(
        {
            "error": "unavailable",
            "message": f"{open_now} connections are open; the limit is {limit} (DIR_MAX_CONNECTIONS); "
            "retry later",
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protocol_class(settings: Settings) -> type[GuardedH11Protocol]:
    """:class:`GuardedH11Protocol` with the limits of ``settings``."""
    return type(
        "DirH11Protocol",
        (GuardedH11Protocol,),
        {
            "max_connections": settings.max_connections,
            "header_timeout_s": settings.header_timeout_s,
            "retry_after_s": settings.retry_after_s,
        },
    )


def uvicorn_config(app: Any, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration ``dir-serve`` runs: bind address, keep-alive timeout and the guarded
    protocol of ``settings``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=protocol_class(settings),
        timeout_keep_alive=settings.keep_alive_s,
    )
