"""``dir-worker``: serve a model's Redis job stream (XREADGROUP batches, run, RPUSH results, XACK + XDEL).

Jobs left pending by a dead worker are reclaimed with XAUTOCLAIM once idle for ``DIR_CLAIM_IDLE_MS``; a job
delivered more than ``DIR_MAX_DELIVERIES`` times is moved to the dead-letter stream and its request is told.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisError, ResponseError

from service.batching import BatchPolicy
from service.errors import InferenceError
from service.metrics import Metrics
from service.queue import pack, quantize_unit, unpack
from service.redis_queue import GROUP, dead_key, result_key, stream_key
from service.settings import Settings
from service.store import RestoreModel
from service.tiling import stack_tiles

log = logging.getLogger("dir.worker")

Entry = tuple[str, dict[Any, Any]]


@dataclass
class Job:
    """One decoded tile job: ``tile`` (3, T, T) sRGB, uint8 or float32 [0, 1]; times are Unix seconds."""

    entry_id: str
    request_id: str
    index: int
    enqueued: float
    deadline: float
    outputs: list[str]
    tile: np.ndarray


def decode_job(entry_id: str, fields: dict[Any, Any]) -> Job:
    """Stream entry -> ``Job``; raises ``ValueError``/``KeyError`` on a malformed entry."""
    _, arrays = unpack(fields[b"data"])
    tile = arrays["tile"]
    if tile.ndim != 3 or tile.shape[0] != 3 or tile.dtype not in (np.uint8, np.float32):
        raise ValueError(
            f"tile has shape {tile.shape} dtype {tile.dtype}, expected (3, T, T) uint8 or float32"
        )
    return Job(
        entry_id,
        fields[b"req"].decode(),
        int(fields[b"idx"]),
        float(fields[b"enq"]),
        float(fields[b"deadline"]),
        fields[b"outputs"].decode().split(","),
        tile,
    )


class Worker:
    """One consumer of the job stream of ``model``. ``clock`` returns Unix seconds (injectable)."""

    def __init__(
        self,
        client: redis.Redis,
        model: RestoreModel,
        settings: Settings,
        metrics: Metrics,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock
        self.policy = BatchPolicy(
            settings.max_batch, settings.max_queue_delay_ms / 1000.0, settings.queue_bound
        )
        self.stream = stream_key(settings.stream_prefix, model.ref)
        self.dead = dead_key(settings.stream_prefix, model.ref)
        self._last_claim = 0.0
        self.unit_outputs = {o.name for o in model.entry.manifest.outputs if o.value_range == (0.0, 1.0)}

    def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start) unless it exists."""
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def reclaim(self) -> list[Entry]:
        """XAUTOCLAIM jobs idle past ``claim_idle_ms``; dead-letter those delivered too often.

        A full batch of claims leaves the next reclaim due at once, so a dead worker's backlog drains fast.
        """
        _, claimed, *_ = self.client.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            self.settings.claim_idle_ms,
            "0-0",
            count=self.settings.max_batch,
        )
        if len(claimed) < self.settings.max_batch:
            self._last_claim = self.clock()
        kept: list[Entry] = []
        for raw_id, fields in claimed:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not fields:  # deleted from the stream while pending (Redis < 7 still returns it)
                self.client.xack(self.stream, GROUP, entry_id)
                continue
            info = self.client.xpending_range(self.stream, GROUP, entry_id, entry_id, 1)
            deliveries = int(info[0]["times_delivered"]) if info else 1
            if deliveries > self.settings.max_deliveries:
                self.dead_letter(entry_id, fields, deliveries)
            else:
                self.metrics.redeliveries.inc()
                kept.append((entry_id, fields))
        return kept

    def dead_letter(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Move a job to the dead-letter stream, tell its request, XACK and XDEL it."""
        log.warning("dead-lettering job %s after %d deliveries", entry_id, deliveries)
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.dead, {**fields, b"deliveries": deliveries, b"source_id": entry_id}, maxlen=10_000)
        request = fields.get(b"req")
        if request is not None:
            message = f"tile job {entry_id} failed {deliveries} deliveries and was dead-lettered"
            index = fields.get(b"idx", b"0")
            header = {"idx": int(index) if index.isdigit() else 0, "error": message}
            self._push(pipe, request.decode(errors="replace"), header, {})
        pipe.xack(self.stream, GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()
        self.metrics.dead_letters.inc()

    def _push(
        self, pipe: Any, request_id: str, header: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        key = result_key(self.settings.stream_prefix, request_id)
        pipe.rpush(key, pack(header, arrays))
        pipe.expire(key, self.settings.result_ttl_s)

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        entries: list[Entry] = []
        for _, items in reply or []:
            for raw_id, fields in items:
                entries.append((raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id), fields))
        return entries

    def read_batch(self, block_ms: int) -> list[Entry]:
        """Reclaimed jobs first, then new ones, filled per the batching policy (max batch, max delay)."""
        entries: list[Entry] = []
        if self.clock() - self._last_claim >= min(1.0, self.settings.claim_idle_ms / 2000.0):
            entries = self.reclaim()
        if not entries:
            entries = self._read(self.settings.max_batch, block_ms)
        while entries:
            oldest = min(_enqueued(fields, self.clock()) for _, fields in entries)
            decision = self.policy.decide(self.clock(), len(entries), oldest)
            if decision.take:
                return entries
            wait_ms = max(1, int((decision.wait_s or 0.0) * 1000))
            entries += self._read(self.settings.max_batch - len(entries), wait_ms)
        return entries

    def process(self, entries: list[Entry]) -> int:
        """Run one batch; returns how many jobs were answered. Malformed or failing jobs stay pending."""
        now = self.clock()
        jobs: list[Job] = []
        pipe = self.client.pipeline(transaction=False)
        answered = 0
        for entry_id, fields in entries:
            try:
                job = decode_job(entry_id, fields)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("malformed job %s left pending for dead-lettering: %s", entry_id, exc)
                continue
            if self.policy.expired(now, job.deadline):
                self._push(
                    pipe,
                    job.request_id,
                    {"idx": job.index, "error": "deadline passed", "kind": "deadline"},
                    {},
                )
                pipe.xack(self.stream, GROUP, entry_id)
                pipe.xdel(self.stream, entry_id)
                answered += 1
                continue
            jobs.append(job)
        for group in self._runnable_groups(jobs):
            answered += self._run(group, pipe, now)
        pipe.xlen(self.stream)
        depth = pipe.execute()[-1]
        self.metrics.queue_depth.labels(self.model.ref).set(depth)
        return answered

    @staticmethod
    def _runnable_groups(jobs: list[Job]) -> list[list[Job]]:
        """Jobs grouped by tile shape (one model call each)."""
        groups: dict[tuple[int, ...], list[Job]] = {}
        for job in jobs:
            groups.setdefault(tuple(job.tile.shape), []).append(job)
        return list(groups.values())

    def _run(self, jobs: list[Job], pipe: Any, now: float) -> int:
        outputs = sorted({o for job in jobs for o in job.outputs})
        started = time.perf_counter()
        try:
            values = self.model.run(stack_tiles([job.tile for job in jobs]), outputs)
        except InferenceError as exc:
            if len(jobs) == 1:
                log.error("job %s failed, left pending for redelivery: %s", jobs[0].entry_id, exc)
                return 0
            return sum(self._run([job], pipe, now) for job in jobs)
        elapsed = time.perf_counter() - started
        batch_id = jobs[0].entry_id
        self.metrics.compute.labels(self.model.ref).observe(elapsed)
        self.metrics.batch_size.labels(self.model.ref).observe(len(jobs))
        for k, job in enumerate(jobs):
            wait = max(0.0, now - job.enqueued)
            self.metrics.queue_wait.labels(self.model.ref).observe(wait)
            header = {"idx": job.index, "wait": wait, "compute": elapsed, "batch": batch_id}
            bits = 8 if job.tile.dtype == np.uint8 else 16
            arrays = {
                name: quantize_unit(values[name][k], bits) if name in self.unit_outputs else values[name][k]
                for name in job.outputs
            }
            self._push(pipe, job.request_id, header, arrays)
            pipe.xack(self.stream, GROUP, job.entry_id)
            pipe.xdel(self.stream, job.entry_id)
        return len(jobs)

    def step(self, block_ms: int = 1000) -> int:
        """One read-run-answer cycle; returns jobs answered (0 when idle)."""
        entries = self.read_batch(block_ms)
        return self.process(entries) if entries else 0

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; Redis outages are retried with backoff, never fatal."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.ensure_group()
                while not stop.is_set():
                    self.step()
                backoff = 0.5
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group vanished (Redis restarted?); recreating it")
            except (RedisError, OSError) as exc:
                log.warning("Redis unavailable (%s); retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def _enqueued(fields: dict[Any, Any], default: float) -> float:
    try:
        return float(fields[b"enq"])
    except (KeyError, ValueError):
        return default
