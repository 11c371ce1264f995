"""A request's deadline: one absolute point in time that every stage (body, decoding, tiling, queueing,
computing, stitching) checks, and the configured budget that 504 messages name.

A synchronous request starts with ``DIR_REQUEST_TIMEOUT_S``; once admission has read its cost from the image
header, :meth:`Deadline.extend` adds ``DIR_REQUEST_TIMEOUT_PER_MP_S`` per megapixel of cost (tile pixels over
all passes of its mode). Jobs run under ``DIR_JOB_TIMEOUT_S`` instead.

Times are ``time.monotonic`` seconds; Redis jobs carry the same point as Unix seconds (:meth:`Deadline.wall`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from service.errors import DeadlineExceeded

T = TypeVar("T")


@dataclass
class Deadline:
    """``at``: the monotonic time the request must be answered by; ``budget_s``: its total, named in
    messages whatever is left when it passes, with ``rule`` (the settings it comes from) and ``hint`` (what
    to do instead)."""

    at: float
    budget_s: float
    rule: str = "DIR_REQUEST_TIMEOUT_S"
    hint: str = ""

    @classmethod
    def after(
        cls, budget_s: float, spent_s: float = 0.0, rule: str = "DIR_REQUEST_TIMEOUT_S", hint: str = ""
    ) -> Deadline:
        """The deadline of a request with ``budget_s`` seconds in all, ``spent_s`` of them already gone."""
        return cls(time.monotonic() + budget_s - spent_s, budget_s, rule, hint)

    def extend(self, seconds: float, rule: str) -> None:
        """Move the deadline ``seconds`` later (stages already waiting see it); ``rule`` now names it."""
        self.at += seconds
        self.budget_s += seconds
        self.rule = rule

    @classmethod
    def of(cls, value: Deadline | float) -> Deadline:
        """``value`` itself, or a deadline ``value`` seconds from now."""
        return value if isinstance(value, Deadline) else cls.after(float(value))

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def wall(self) -> float:
        """The same point as Unix seconds (for Redis jobs, which workers on other hosts compare with their
        own clock)."""
        return time.time() + self.remaining()

    def exceeded(self, stage: str) -> DeadlineExceeded:
        """The 504 for a deadline that passed during ``stage`` (e.g. "decoding")."""
        return DeadlineExceeded(
            f"request not finished within its {self.budget_s:.4g} s deadline ({self.rule}); "
            f"it passed while {stage}{self.hint}"
        )

    def check(self, stage: str) -> None:
        """Raise :meth:`exceeded` when no time is left before ``stage``."""
        if self.remaining() <= 0:
            raise self.exceeded(stage)

    async def run(self, work: Awaitable[T], stage: str) -> T:
        """Await ``work`` until the deadline (also when :meth:`extend` moves it meanwhile); past it, cancel
        it and raise :meth:`exceeded`. Work running in a thread (``asyncio.to_thread``) finishes there
        unobserved: its result is dropped."""
        if self.remaining() <= 0:
            if asyncio.iscoroutine(work):
                work.close()
            raise self.exceeded(stage)
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                left = self.remaining()
                if left <= 0:
                    raise self.exceeded(stage)
                await asyncio.wait({task}, timeout=left)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
