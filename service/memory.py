"""Giving a large request's memory back to the operating system once it has been answered.

NumPy buffers of a request (tiles, per-tile outputs, stitched arrays, encoded bodies) are freed when the
request ends, but glibc's allocator keeps freed heap pages (and per-thread arenas of the threads that
decoded, tiled and ran the model) mapped, so a process that served one costly request stays at its peak
resident size. :class:`ReleaseMemory` calls ``malloc_trim(0)`` after every request whose admitted cost
(:func:`note_cost`, tile pixels) reached :data:`TRIM_ABOVE_PIXELS`, after the response has been sent and the
request's frames are gone. Where there is no glibc (musl, macOS, Windows) it does nothing.

ONNX Runtime's CPU arena keeps the buffers of the largest model call (about 650 MiB with 512-px tiles on
dir-restore/3.3.0) for the process's life; before trimming, ``shrink`` (the app's
``ServiceState.shrink_arenas``, ``DIR_ORT_ARENA_SHRINK``) gives its free chunks back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable, MutableMapping
from functools import cache
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("dir.service")

#: Requests whose cost reached this many tile pixels (16 tiles of 512 px) trim the heap afterwards.
TRIM_ABOVE_PIXELS = 16 * 512 * 512
#: Key of the admitted cost in the ASGI scope's ``state``.
COST_KEY = "dir_cost_pixels"


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory(shrink: Callable[[], None] | None = None) -> bool:
    """Run ``shrink`` (e.g. ONNX Runtime's arenas), then return freed heap memory of every malloc arena to the
    OS (``malloc_trim(0)``); True when glibc did release some, False when nothing was released or the C
    library cannot trim."""
    if shrink is not None:
        shrink()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def note_cost(scope: MutableMapping[str, Any], pixels: int) -> None:
    """Record a request's admitted cost (tile pixels) in its ASGI scope for :class:`ReleaseMemory`."""
    scope.setdefault("state", {})[COST_KEY] = pixels


class ReleaseMemory:
    """ASGI middleware: after a request whose noted cost reached ``threshold`` tile pixels (default
    :data:`TRIM_ABOVE_PIXELS`) has been answered (response sent, handlers returned), run
    :func:`release_memory` with ``shrink`` in a thread."""

    def __init__(
        self, app: ASGIApp, threshold: int | None = None, shrink: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.threshold = TRIM_ABOVE_PIXELS if threshold is None else threshold
        self.shrink = shrink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get(COST_KEY, 0) >= self.threshold:
                released = await asyncio.to_thread(release_memory, self.shrink)
                log.debug("request of %d tile pixels done: heap trimmed (%s)", state[COST_KEY], released)
