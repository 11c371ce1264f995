"""The pure batching policy, driven by explicit times (no clock, no sleeping)."""

from __future__ import annotations

import pytest

from service.batching import BatchPolicy, Decision

POLICY = BatchPolicy(max_batch=4, max_delay_s=0.010, bound=10)


def test_empty_queue_waits_until_woken() -> None:
    assert POLICY.decide(now=5.0, depth=0, oldest_enqueued=None) == Decision(0, None)


def test_full_batch_runs_at_once() -> None:
    assert POLICY.decide(now=5.0, depth=9, oldest_enqueued=5.0) == Decision(4, None)


def test_partial_batch_waits_for_the_rest_of_the_delay() -> None:
    decision = POLICY.decide(now=5.004, depth=2, oldest_enqueued=5.0)
    assert decision.take == 0
    assert decision.wait_s == pytest.approx(0.006)


def test_partial_batch_runs_when_delay_passed() -> None:
    assert POLICY.decide(now=5.011, depth=3, oldest_enqueued=5.0) == Decision(3, None)


def test_wait_never_exceeds_the_delay_under_clock_skew() -> None:
    decision = POLICY.decide(now=5.0, depth=1, oldest_enqueued=7.0)
    assert decision.wait_s == pytest.approx(0.010)


def test_batching_off_runs_every_tile_alone() -> None:
    off = BatchPolicy(max_batch=1, max_delay_s=0.0, bound=10)
    assert off.decide(now=1.0, depth=5, oldest_enqueued=1.0) == Decision(1, None)


@pytest.mark.parametrize(
    ("depth", "incoming", "admitted"), [(0, 50, True), (3, 7, True), (3, 8, False), (10, 1, False)]
)
def test_admission_bound(depth: int, incoming: int, admitted: bool) -> None:
    assert POLICY.admit(depth, incoming) is admitted


def test_expiry() -> None:
    assert BatchPolicy.expired(now=2.0, deadline=2.0)
    assert not BatchPolicy.expired(now=1.9, deadline=2.0)
