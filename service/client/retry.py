"""Retry policy: which answers are retried and how long to wait before the next attempt."""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait per a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 429/503 answers and failed connections with capped exponential backoff.

    A ``Retry-After`` header from the server replaces the backoff for that attempt (the client never waits
    less than the server asked); a server asking for more than ``max_retry_after`` seconds is not retried.
    """

    max_attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.1
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def should_retry_status(self, status: int, attempt: int, retry_after: float | None) -> bool:
        """True when an answer with ``status`` on attempt ``attempt`` (1-based) deserves another attempt."""
        if status not in self.retry_statuses or attempt >= self.max_attempts:
            return False
        return retry_after is None or retry_after <= self.max_retry_after

    def should_retry_connect(self, attempt: int) -> bool:
        """True when a failed connection on attempt ``attempt`` (1-based) deserves another attempt."""
        return attempt < self.max_attempts

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed."""
        if retry_after is not None:
            return retry_after
        backoff = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return backoff * (1.0 + self.jitter * random.random())


NO_RETRY = RetryPolicy(max_attempts=1)
