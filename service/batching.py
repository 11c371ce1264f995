"""The dynamic batching policy (after Triton's dynamic batcher): pure, clock-injected, used by both backends.

Times are seconds on whatever clock the caller uses (``time.monotonic`` in the API, ``time.time`` in Redis
workers, a counter in tests); the policy never reads a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """What to do now: run ``take`` tiles (``take > 0``), or wait ``wait_s`` seconds (None: until woken)."""

    take: int = 0
    wait_s: float | None = None


@dataclass(frozen=True)
class BatchPolicy:
    """Max batch size, max queue delay and queue bound.

    ``max_delay_s == 0`` with ``max_batch == 1`` is "batching off": every tile runs alone, immediately.
    """

    max_batch: int
    max_delay_s: float
    bound: int

    def admit(self, depth: int, incoming: int) -> bool:
        """Whether ``incoming`` tiles may join a queue holding ``depth`` tiles.

        An empty queue admits any request (so one image larger than the bound is still served); otherwise
        the total must stay within ``bound``.
        """
        return depth == 0 or depth + incoming <= self.bound

    def decide(self, now: float, depth: int, oldest_enqueued: float | None) -> Decision:
        """Run a full batch at once; run a partial one when its oldest tile has waited ``max_delay_s``."""
        if depth <= 0 or oldest_enqueued is None:
            return Decision(0, None)
        if depth >= self.max_batch:
            return Decision(self.max_batch, None)
        waited = now - oldest_enqueued
        if waited >= self.max_delay_s:
            return Decision(depth, None)
        return Decision(0, min(self.max_delay_s - waited, self.max_delay_s))

    @staticmethod
    def expired(now: float, deadline: float) -> bool:
        """Whether a tile whose request's deadline is ``deadline`` should be dropped instead of run."""
        return now >= deadline
