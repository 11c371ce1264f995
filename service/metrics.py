"""Prometheus metrics, built per process (in the app lifespan or the worker) into an explicit registry.

Names are a contract with the Grafana dashboard (docker/): change them only together. When
``PROMETHEUS_MULTIPROC_DIR`` is set (API + ``dir-worker`` processes), values go to that folder and
``/metrics`` aggregates every process.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
REJECT_REASONS = ("queue_full", "deadline", "too_large", "bad_input", "unauthorized", "client_closed")


def multiprocess_dir() -> str | None:
    """The Prometheus multiprocess folder, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every service metric, registered in ``registry`` (a fresh one per app or worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.request_duration = Histogram(
            "dir_request_duration_seconds",
            "HTTP request duration",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            "dir_queue_wait_seconds",
            "time a tile waited in the queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.compute = Histogram(
            "dir_compute_seconds", "model time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=reg
        )
        self.batch_size = Histogram(
            "dir_batch_size", "tiles per batch", ["model"], buckets=BATCH_BUCKETS, registry=reg
        )
        self.queue_depth = Gauge(
            "dir_queue_depth", "tiles waiting", ["model"], multiprocess_mode="livemax", registry=reg
        )
        self.live_workers = Gauge(
            "dir_live_workers",
            "dir-worker processes with a live heartbeat (Redis mode; read when /metrics or /readyz is "
            "served)",
            ["model"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.redeliveries = Counter(
            "dir_redeliveries", "Redis jobs delivered again after a worker died", registry=reg
        )
        self.dead_letters = Counter(
            "dir_dead_letters", "Redis jobs moved to the dead-letter stream", registry=reg
        )
        self.rejected = Counter("dir_rejected", "requests rejected", ["reason"], registry=reg)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def exposition(self) -> bytes:
        """The text exposition of this process, or of every process in multiprocess mode."""
        if multiprocess_dir():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
