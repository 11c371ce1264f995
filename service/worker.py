"""``dir-worker``: serve a model's Redis job streams (XREADGROUP batches, run, RPUSH results, XACK + XDEL).

Two streams per graph of the model (the serving graph, the guide graph of two-pass entries, the denoise
graph): the job stream and the priority stream, which holds the jobs of small requests and is read first,
so they overtake a costly request's backlog. A job holds up to ``max_batch`` tiles of one request. The
worker reads jobs one at a time (priority streams first) until its batching policy (in tiles) says run,
then runs each graph's tiles in model calls of at most ``max_batch`` tiles (jobs of several requests share
a call) and answers with one result message per job. Answering (quantising, RPUSH, XACK + XDEL in one
MULTI/EXEC) runs in a second thread while the next batch computes; one batch of answers is in flight at
most, and a job is acknowledged only once its result is stored.

A heartbeat thread refreshes the worker's heartbeat key (TTL ``DIR_HEARTBEAT_TTL_MS``) four times per TTL,
whatever the model is doing. Jobs left pending by a worker whose heartbeat is gone are claimed (XCLAIM)
within a second of noticing; jobs of a live but stuck worker are reclaimed with XAUTOCLAIM once idle for
``DIR_CLAIM_IDLE_MS``. A job delivered more than ``DIR_MAX_DELIVERIES`` times is moved to the dead-letter
stream and its request is told. Jobs whose deadline passed or whose request was cancelled are acknowledged
and dropped without running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisError, ResponseError

from service.batching import BatchPolicy
from service.errors import InferenceError
from service.jobs import Answer, Job, decode_job
from service.metrics import Metrics
from service.queue import lane_ref, pack, quantize_unit
from service.redis_queue import (
    GROUP,
    cancel_key,
    dead_key,
    heartbeat_key,
    job_tiles,
    queued_tiles,
    result_key,
    stream_key,
    tiles_key,
    workers_key,
)
from service.settings import Settings
from service.store import RestoreModel
from service.tiling import concat_batches

log = logging.getLogger("dir.worker")

#: (stream key, stream entry id, fields) of one job read from one of a graph's two streams.
Entry = tuple[str, str, dict[Any, Any]]
#: Seconds between the non-blocking reads of a worker filling a partial batch.
POLL_S = 0.001
#: A dead worker's pending job is claimed only when idle this long, so two rescuers never both take it
#: (the first XCLAIM resets the idle time).
DEAD_CLAIM_IDLE_MS = 100
#: Longest pause between reconnection attempts while Redis is down.
MAX_BACKOFF_S = 1.0


class Worker:
    """One consumer of the job streams of ``model`` (two per graph). ``clock`` returns Unix seconds."""

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
        prefix = settings.stream_prefix
        self.lanes = {graph: lane_ref(model.ref, graph) for graph in model.graphs}
        #: Every job stream -> its graph: the priority streams first (read and reclaimed first).
        self.streams = {
            stream_key(prefix, lane, urgent): graph
            for urgent in (True, False)
            for graph, lane in self.lanes.items()
        }
        self.priority_streams = [stream_key(prefix, lane, True) for lane in self.lanes.values()]
        #: Every job stream -> the counter of its tiles.
        self.tiles = {
            stream_key(prefix, lane, urgent): tiles_key(prefix, lane, urgent)
            for urgent in (True, False)
            for lane in self.lanes.values()
        }
        self.dead = {graph: dead_key(prefix, lane) for graph, lane in self.lanes.items()}
        self._last_claim = 0.0
        self.unit_outputs = {o.name for o in model.entry.manifest.outputs if o.value_range == (0.0, 1.0)}
        self._answerer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dir-answer")
        self._in_flight: Future[None] | None = None
        self.heartbeat_key = heartbeat_key(settings.stream_prefix, model.ref, self.consumer)

    def beat(self) -> None:
        """Refresh this worker's heartbeat key (TTL ``heartbeat_ttl_ms``) and its name in the worker set."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.heartbeat_key, b"1", px=self.settings.heartbeat_ttl_ms)
        pipe.sadd(workers_key(self.settings.stream_prefix, self.model.ref), self.consumer)
        pipe.execute()

    def heartbeat(self, stop: threading.Event) -> None:
        """Beat four times per TTL until ``stop`` is set, then delete the key (a clean exit is not live);
        Redis errors are logged and retried on the next beat."""
        interval = self.settings.heartbeat_ttl_ms / 4000.0
        while True:
            try:
                self.beat()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat failed: %s", exc)
            if stop.wait(interval):
                break
        try:
            self.client.delete(self.heartbeat_key)
        except (RedisError, OSError) as exc:
            log.debug("heartbeat key not deleted: %s", exc)

    def dead_owners(self, stream: str) -> list[str]:
        """Consumers other than this one holding pending jobs of ``stream`` whose heartbeat key is gone."""
        summary: Any = self.client.xpending(stream, GROUP)
        owners = [
            c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            for c in summary.get("consumers") or []
            if int(c["pending"])
        ]
        owners = [name for name in owners if name != self.consumer]
        if not owners:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in owners:
            pipe.exists(heartbeat_key(self.settings.stream_prefix, self.model.ref, name))
        return [name for name, up in zip(owners, pipe.execute(), strict=True) if not up]

    def claim_from_dead(self, stream: str, count: int) -> list[Any]:
        """XCLAIM up to ``count`` pending jobs of ``stream`` from consumers whose heartbeat is gone."""
        claimed: list[Any] = []
        for owner in self.dead_owners(stream):
            if len(claimed) >= count:
                break
            pending: Any = self.client.xpending_range(
                stream, GROUP, "-", "+", count - len(claimed), consumername=owner
            )
            ids = [p["message_id"] for p in pending]
            if ids:
                log.warning("claiming %d job(s) of %s, whose heartbeat is gone", len(ids), owner)
                claimed += self.client.xclaim(stream, GROUP, self.consumer, DEAD_CLAIM_IDLE_MS, ids)
        return claimed

    def ensure_group(self) -> None:
        """Create the consumer group of every stream (from the stream's start) unless it exists."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def reclaim(self) -> list[Entry]:
        """Claim the pending jobs of workers whose heartbeat is gone (XCLAIM), then jobs idle past
        ``claim_idle_ms`` (XAUTOCLAIM), on every stream (priority streams first); dead-letter those
        delivered too often.

        A full batch of claims leaves the next reclaim due at once, so a dead worker's backlog drains fast.
        """
        kept: list[Entry] = []
        full = False
        size = self.settings.max_batch
        for stream in self.streams:
            claimed = self.claim_from_dead(stream, size)
            if len(claimed) < size:
                idle_ms = self.settings.claim_idle_ms
                left = size - len(claimed)
                _, more, *_ = self.client.xautoclaim(stream, GROUP, self.consumer, idle_ms, "0-0", count=left)
                claimed += more
            full = full or len(claimed) >= size
            for raw_id, fields in claimed:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                if not fields:  # deleted from the stream while pending (Redis < 7 still returns it)
                    self.client.xack(stream, GROUP, entry_id)
                    continue
                info = self.client.xpending_range(stream, GROUP, entry_id, entry_id, 1)
                deliveries = int(info[0]["times_delivered"]) if info else 1
                if deliveries > self.settings.max_deliveries:
                    self.dead_letter(stream, entry_id, fields, deliveries)
                else:
                    self.metrics.redeliveries.inc()
                    kept.append((stream, entry_id, fields))
        if not full:
            self._last_claim = self.clock()
        return kept

    def dead_letter(self, stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Move a job of ``stream`` to its graph's dead-letter stream, tell its request, XACK and XDEL it."""
        log.warning("dead-lettering job %s of %s after %d deliveries", entry_id, stream, deliveries)
        pipe = self.client.pipeline(transaction=True)
        dead = {**fields, b"deliveries": deliveries, b"source": stream, b"source_id": entry_id}
        pipe.xadd(self.dead[self.streams[stream]], dead, maxlen=10_000)
        request = fields.get(b"req")
        if request is not None:
            message = f"tile job {entry_id} failed {deliveries} deliveries and was dead-lettered"
            index = fields.get(b"idx", b"0")
            header = {"idx": int(index) if index.isdigit() else 0, "n": job_tiles(fields), "error": message}
            self._push(pipe, request.decode(errors="replace"), header, {})
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.decrby(self.tiles[stream], job_tiles(fields))
        pipe.execute()
        self.metrics.dead_letters.inc()

    def _push(
        self, pipe: Any, request_id: str, header: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        key = result_key(self.settings.stream_prefix, request_id)
        pipe.rpush(key, pack(header, arrays))
        pipe.expire(key, self.settings.result_ttl_s)

    def _read(self, block_ms: int | None) -> list[Entry]:
        """At most one new job per priority stream, without blocking; when they hold none, at most one per
        stream, blocking up to ``block_ms`` until any stream has one (None: not at all). One at a time,
        because a job holds up to ``max_batch`` tiles: a worker never takes more work than its next batch
        needs, so a small request's job queued later is read next, ahead of a costly request's backlog."""
        return self._read_streams(self.priority_streams, None) or self._read_streams(
            list(self.streams), block_ms
        )

    def _read_streams(self, streams: list[str], block_ms: int | None) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, dict.fromkeys(streams, ">"), count=1, block=block_ms
        )
        entries: list[Entry] = []
        for raw_stream, items in reply or []:
            stream = raw_stream.decode() if isinstance(raw_stream, bytes) else str(raw_stream)
            for raw_id, fields in items:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                entries.append((stream, entry_id, fields))
        return entries

    @property
    def reclaim_interval_s(self) -> float:
        """Seconds between reclaim checks: at most 1 s, half the claim idle time, a quarter of the heartbeat
        TTL (a dead worker's jobs are claimed at most a TTL and a half after its last beat)."""
        return min(1.0, self.settings.claim_idle_ms / 2000.0, self.settings.heartbeat_ttl_ms / 4000.0)

    def read_batch(self, block_ms: int) -> list[Entry]:
        """Reclaimed jobs first, then new ones (blocking up to ``block_ms``, but no longer than the reclaim
        interval), filled per the batching policy (max batch, max delay) applied to the tiles of the fullest
        graph. The last job read may take a graph past the max batch; its tiles then run in the next model
        call of the same step."""
        entries: list[Entry] = []
        if self.clock() - self._last_claim >= self.reclaim_interval_s:
            entries = self.reclaim()
        if not entries:
            entries = self._read(min(block_ms, int(self.reclaim_interval_s * 1000)))
        while entries:
            oldest = min(_enqueued(fields, self.clock()) for _, _, fields in entries)
            fullest = max(
                sum(job_tiles(fields) for stream, _, fields in entries if self.streams[stream] == graph)
                for graph in self.lanes
            )
            decision = self.policy.decide(self.clock(), fullest, oldest)
            if decision.take:
                return entries
            # A blocked XREADGROUP times out only at Redis' next `hz` tick (every 100 ms by default), far
            # later than a few ms of batching delay: wait here, polling without blocking.
            time.sleep(min(decision.wait_s or 0.0, POLL_S))
            entries += self._read(None)
        return entries

    def process(self, entries: list[Entry]) -> int:
        """Run one batch and hand its answers to the answering thread; returns how many jobs get an answer.
        Malformed or failing jobs stay pending. Raises the Redis error of the previous batch's answers."""
        now = self.clock()
        decoded: list[Job] = []
        answers: list[Answer] = []
        for stream, entry_id, fields in entries:
            try:
                decoded.append(decode_job(self.streams[stream], stream, entry_id, fields))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("malformed job %s left pending for dead-lettering: %s", entry_id, exc)
        cancelled = self.cancelled({job.request_id for job in decoded})
        dropped = [job for job in decoded if job.request_id in cancelled]
        jobs: list[Job] = []
        for job in decoded:
            if job.request_id in cancelled:
                continue
            if self.policy.expired(now, job.deadline):
                error = {"idx": job.start, "n": job.count, "error": "deadline passed", "kind": "deadline"}
                answers.append(Answer(job, error))
                continue
            jobs.append(job)
        for group in self._runnable_groups(jobs):
            answers += self._run(group, now)
        self.flush()
        self._in_flight = self._answerer.submit(self._answer, answers, dropped)
        return len(answers) + len(dropped)

    def cancelled(self, request_ids: set[str]) -> set[str]:
        """Those of ``request_ids`` whose request ended before its jobs ran (cancel key set)."""
        if not request_ids:
            return set()
        ordered = sorted(request_ids)
        pipe = self.client.pipeline(transaction=False)
        for request_id in ordered:
            pipe.exists(cancel_key(self.settings.stream_prefix, request_id))
        return {r for r, gone in zip(ordered, pipe.execute(), strict=True) if gone}

    def flush(self) -> None:
        """Wait until the answers in flight are stored; re-raises their Redis error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _answer(self, answers: list[Answer], dropped: list[Job] | None = None) -> None:
        """Quantise, RPUSH and acknowledge ``answers``, acknowledge ``dropped`` jobs (cancelled requests: no
        answer), in one MULTI/EXEC; refresh the queue-depth gauges."""
        pipe = self.client.pipeline(transaction=True)
        for job in dropped or []:
            self._done(pipe, job)
        for answer in answers:
            job = answer.job
            bits = 8 if any(a.dtype == np.uint8 for a in job.inputs.values()) else 16
            arrays = {
                name: quantize_unit(a, bits) if name in self.unit_outputs else a
                for name, a in answer.values.items()
            }
            self._push(pipe, job.request_id, answer.header, arrays)
            self._done(pipe, job)
        for stream, counter in self.tiles.items():
            pipe.xlen(stream)
            pipe.get(counter)
        replies = pipe.execute()[-2 * len(self.tiles) :]
        depths = dict.fromkeys(self.lanes.values(), 0)
        for k, stream in enumerate(self.tiles):
            depths[self.lanes[self.streams[stream]]] += queued_tiles(replies[2 * k], replies[2 * k + 1])
        for lane, depth in depths.items():
            self.metrics.queue_depth.labels(lane).set(depth)

    def _done(self, pipe: Any, job: Job) -> None:
        pipe.xack(job.stream, GROUP, job.entry_id)
        pipe.xdel(job.stream, job.entry_id)
        pipe.decrby(self.tiles[job.stream], job.count)

    @staticmethod
    def _runnable_groups(jobs: list[Job]) -> list[list[Job]]:
        """Jobs grouped by graph and tile shapes (graphs never share a batch)."""
        groups: dict[tuple[object, ...], list[Job]] = {}
        for job in jobs:
            shapes = tuple((name, a.shape[1:]) for name, a in sorted(job.inputs.items()))
            groups.setdefault((job.graph, shapes), []).append(job)
        return list(groups.values())

    def _run(self, jobs: list[Job], now: float) -> list[Answer]:
        """Run the tiles of ``jobs`` (one graph) in model calls of at most ``max_batch`` tiles; one answer per
        job. A failing call is retried job by job, and a job that fails alone stays pending (redelivery,
        then the dead-letter stream)."""
        outputs = sorted({o for job in jobs for o in job.outputs})
        graph = jobs[0].graph
        lane = self.lanes[graph]
        stacked = {name: concat_batches([job.inputs[name] for job in jobs]) for name in jobs[0].inputs}
        total = len(next(iter(stacked.values())))
        size = self.settings.max_batch
        parts: list[dict[str, np.ndarray]] = []
        started = time.perf_counter()
        try:
            for a in range(0, total, size):
                call_started = time.perf_counter()
                parts.append(self.model.run({n: v[a : a + size] for n, v in stacked.items()}, outputs, graph))
                self.metrics.compute.labels(lane).observe(time.perf_counter() - call_started)
                self.metrics.batch_size.labels(lane).observe(min(size, total - a))
        except InferenceError as exc:
            if len(jobs) == 1:
                log.error("job %s failed, left pending for redelivery: %s", jobs[0].entry_id, exc)
                return []
            return [answer for job in jobs for answer in self._run([job], now)]
        elapsed = time.perf_counter() - started
        values = {o: concat_batches([part[o] for part in parts]) for o in outputs}
        batch_id = jobs[0].entry_id
        answers = []
        offset = 0
        for job in jobs:
            wait = max(0.0, now - job.enqueued)
            self.metrics.queue_wait.labels(lane).observe(wait)
            header = {"idx": job.start, "n": job.count, "wait": wait, "compute": elapsed, "batch": batch_id}
            rows = slice(offset, offset + job.count)
            answers.append(Answer(job, header, {name: values[name][rows] for name in job.outputs}))
            offset += job.count
        return answers

    def step(self, block_ms: int = 1000) -> int:
        """One read-run-answer cycle; returns jobs answered (0 when idle)."""
        entries = self.read_batch(block_ms)
        return self.process(entries) if entries else 0

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, heartbeating from a second thread; Redis outages are retried with a
        backoff from 0.1 s doubling up to ``MAX_BACKOFF_S``, never fatal."""
        beating = threading.Event()
        heart = threading.Thread(target=self.heartbeat, args=(beating,), name="dir-heartbeat", daemon=True)
        heart.start()
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    self.ensure_group()
                    self.beat()  # live again at once after an outage (Redis restarted without its keys)
                    backoff = 0.1
                    while not stop.is_set():
                        self.step()
                    self.flush()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("consumer group vanished (Redis restarted?); recreating it")
                except (RedisError, OSError) as exc:
                    log.warning("Redis unavailable (%s); retrying in %.1f s", exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            beating.set()
            heart.join(timeout=5)


def _enqueued(fields: dict[Any, Any], default: float) -> float:
    try:
        return float(fields[b"enq"])
    except (KeyError, ValueError):
        return default
