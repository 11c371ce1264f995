"""``dir-worker``: serve a model's Redis job streams (XREADGROUP batches, run, RPUSH results, XACK + XDEL).

One stream per graph of the model (the serving graph, and the guide graph of two-pass entries); one
XREADGROUP reads both, and a batch holds jobs of one graph only.
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
from service.queue import lane_ref, pack, quantize_unit, unpack
from service.redis_queue import GROUP, dead_key, result_key, stream_key
from service.settings import Settings
from service.store import RestoreModel
from service.tiling import stack_tiles

log = logging.getLogger("dir.worker")

#: (graph, stream entry id, fields) of one job read from the graph's stream.
Entry = tuple[str, str, dict[Any, Any]]


@dataclass
class Job:
    """One decoded tile job of ``graph``: ``inputs`` the tile's graph inputs (``image`` (3, T, T) sRGB,
    uint8 or float32 [0, 1]; ``guide_mean`` (K,) float32 for a two-pass serving graph; ``owned_window``
    (4,) uint16 for a guide graph); Unix seconds."""

    graph: str
    entry_id: str
    request_id: str
    index: int
    enqueued: float
    deadline: float
    outputs: list[str]
    inputs: dict[str, np.ndarray]


def decode_job(graph: str, entry_id: str, fields: dict[Any, Any]) -> Job:
    """Stream entry -> ``Job``; raises ``ValueError``/``KeyError`` on a malformed entry."""
    _, inputs = unpack(fields[b"data"])
    if not inputs or any(a.dtype not in (np.uint8, np.uint16, np.float32) for a in inputs.values()):
        shapes = {name: (a.shape, str(a.dtype)) for name, a in inputs.items()}
        raise ValueError(f"job inputs {shapes}: expected at least one, each uint8, uint16 or float32")
    return Job(
        graph,
        entry_id,
        fields[b"req"].decode(),
        int(fields[b"idx"]),
        float(fields[b"enq"]),
        float(fields[b"deadline"]),
        fields[b"outputs"].decode().split(","),
        inputs,
    )


class Worker:
    """One consumer of the job streams of ``model`` (one per graph). ``clock`` returns Unix seconds."""

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
        self.lanes = {graph: lane_ref(model.ref, graph) for graph in model.graphs}
        self.streams = {graph: stream_key(settings.stream_prefix, lane) for graph, lane in self.lanes.items()}
        self.dead = {graph: dead_key(settings.stream_prefix, lane) for graph, lane in self.lanes.items()}
        self._graph_of = {stream: graph for graph, stream in self.streams.items()}
        self._last_claim = 0.0
        self.unit_outputs = {o.name for o in model.entry.manifest.outputs if o.value_range == (0.0, 1.0)}

    def ensure_group(self) -> None:
        """Create the consumer group of every stream (from the stream's start) unless it exists."""
        for stream in self.streams.values():
            try:
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def reclaim(self) -> list[Entry]:
        """XAUTOCLAIM jobs idle past ``claim_idle_ms`` on every stream; dead-letter those delivered too often.

        A full batch of claims leaves the next reclaim due at once, so a dead worker's backlog drains fast.
        """
        kept: list[Entry] = []
        full = False
        for graph, stream in self.streams.items():
            _, claimed, *_ = self.client.xautoclaim(
                stream,
                GROUP,
                self.consumer,
                self.settings.claim_idle_ms,
                "0-0",
                count=self.settings.max_batch,
            )
            full = full or len(claimed) >= self.settings.max_batch
            for raw_id, fields in claimed:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                if not fields:  # deleted from the stream while pending (Redis < 7 still returns it)
                    self.client.xack(stream, GROUP, entry_id)
                    continue
                info = self.client.xpending_range(stream, GROUP, entry_id, entry_id, 1)
                deliveries = int(info[0]["times_delivered"]) if info else 1
                if deliveries > self.settings.max_deliveries:
                    self.dead_letter(graph, entry_id, fields, deliveries)
                else:
                    self.metrics.redeliveries.inc()
                    kept.append((graph, entry_id, fields))
        if not full:
            self._last_claim = self.clock()
        return kept

    def dead_letter(self, graph: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Move a job of ``graph`` to its dead-letter stream, tell its request, XACK and XDEL it."""
        log.warning("dead-lettering job %s after %d deliveries", entry_id, deliveries)
        stream = self.streams[graph]
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(
            self.dead[graph], {**fields, b"deliveries": deliveries, b"source_id": entry_id}, maxlen=10_000
        )
        request = fields.get(b"req")
        if request is not None:
            message = f"tile job {entry_id} failed {deliveries} deliveries and was dead-lettered"
            index = fields.get(b"idx", b"0")
            header = {"idx": int(index) if index.isdigit() else 0, "error": message}
            self._push(pipe, request.decode(errors="replace"), header, {})
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()
        self.metrics.dead_letters.inc()

    def _push(
        self, pipe: Any, request_id: str, header: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        key = result_key(self.settings.stream_prefix, request_id)
        pipe.rpush(key, pack(header, arrays))
        pipe.expire(key, self.settings.result_ttl_s)

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` new jobs per stream, blocking until any stream has one."""
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, dict.fromkeys(self.streams.values(), ">"), count=count, block=block_ms
        )
        entries: list[Entry] = []
        for raw_stream, items in reply or []:
            stream = raw_stream.decode() if isinstance(raw_stream, bytes) else str(raw_stream)
            for raw_id, fields in items:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                entries.append((self._graph_of[stream], entry_id, fields))
        return entries

    def read_batch(self, block_ms: int) -> list[Entry]:
        """Reclaimed jobs first, then new ones, filled per the batching policy (max batch, max delay) applied
        to the fullest graph; every graph's share stays within the max batch."""
        entries: list[Entry] = []
        if self.clock() - self._last_claim >= min(1.0, self.settings.claim_idle_ms / 2000.0):
            entries = self.reclaim()
        if not entries:
            entries = self._read(self.settings.max_batch, block_ms)
        while entries:
            oldest = min(_enqueued(fields, self.clock()) for _, _, fields in entries)
            fullest = max(sum(1 for e in entries if e[0] == graph) for graph in self.streams)
            decision = self.policy.decide(self.clock(), fullest, oldest)
            if decision.take:
                return entries
            wait_ms = max(1, int((decision.wait_s or 0.0) * 1000))
            entries += self._read(self.settings.max_batch - fullest, wait_ms)
        return entries

    def process(self, entries: list[Entry]) -> int:
        """Run one batch; returns how many jobs were answered. Malformed or failing jobs stay pending."""
        now = self.clock()
        jobs: list[Job] = []
        pipe = self.client.pipeline(transaction=False)
        answered = 0
        for graph, entry_id, fields in entries:
            try:
                job = decode_job(graph, entry_id, fields)
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
                self._done(pipe, job)
                answered += 1
                continue
            jobs.append(job)
        for group in self._runnable_groups(jobs):
            answered += self._run(group, pipe, now)
        for stream in self.streams.values():
            pipe.xlen(stream)
        depths = pipe.execute()[-len(self.streams) :]
        for lane, depth in zip(self.lanes.values(), depths, strict=True):
            self.metrics.queue_depth.labels(lane).set(depth)
        return answered

    def _done(self, pipe: Any, job: Job) -> None:
        pipe.xack(self.streams[job.graph], GROUP, job.entry_id)
        pipe.xdel(self.streams[job.graph], job.entry_id)

    @staticmethod
    def _runnable_groups(jobs: list[Job]) -> list[list[Job]]:
        """Jobs grouped by graph and input shapes (one model call each; graphs never share a batch)."""
        groups: dict[tuple[object, ...], list[Job]] = {}
        for job in jobs:
            shapes = tuple((name, a.shape) for name, a in sorted(job.inputs.items()))
            groups.setdefault((job.graph, shapes), []).append(job)
        return list(groups.values())

    def _run(self, jobs: list[Job], pipe: Any, now: float) -> int:
        outputs = sorted({o for job in jobs for o in job.outputs})
        graph = jobs[0].graph
        stacked = {name: stack_tiles([job.inputs[name] for job in jobs]) for name in jobs[0].inputs}
        started = time.perf_counter()
        try:
            values = self.model.run(stacked, outputs, graph)
        except InferenceError as exc:
            if len(jobs) == 1:
                log.error("job %s failed, left pending for redelivery: %s", jobs[0].entry_id, exc)
                return 0
            return sum(self._run([job], pipe, now) for job in jobs)
        elapsed = time.perf_counter() - started
        batch_id = jobs[0].entry_id
        lane = self.lanes[graph]
        self.metrics.compute.labels(lane).observe(elapsed)
        self.metrics.batch_size.labels(lane).observe(len(jobs))
        for k, job in enumerate(jobs):
            wait = max(0.0, now - job.enqueued)
            self.metrics.queue_wait.labels(lane).observe(wait)
            header = {"idx": job.index, "wait": wait, "compute": elapsed, "batch": batch_id}
            bits = 8 if any(a.dtype == np.uint8 for a in job.inputs.values()) else 16
            arrays = {
                name: quantize_unit(values[name][k], bits) if name in self.unit_outputs else values[name][k]
                for name in job.outputs
            }
            self._push(pipe, job.request_id, header, arrays)
            self._done(pipe, job)
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
