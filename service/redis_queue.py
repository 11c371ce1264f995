"""The Redis Streams backend, API side: XADD a request's tiles as jobs of at most ``max_batch`` tiles, then
collect one result message per job from a per-request list.

Keys (``p`` = ``DIR_STREAM_PREFIX``, ``m`` = the lane: ``name/version`` for the serving graph,
``name/version:guide`` for the guide graph of two-pass entries): ``p:jobs:m`` the job stream (consumer
group ``workers``) and ``p:prio:m`` its priority stream, which holds the jobs of requests of at most
``DIR_PRIORITY_TILES`` tiles (per pass) and which workers read first, so a small request's tiles overtake a
costly request's backlog; ``p:tiles:m`` and ``p:prio-tiles:m`` the number of tiles in each (a counter
changed in the same MULTI/EXEC as every XADD and every XACK + XDEL, so the queue bound counts tiles, not
jobs, over both streams of a lane), ``p:dead:m`` the dead-letter stream of both, ``p:res:<request id>``
the result list (workers RPUSH, TTL ``DIR_RESULT_TTL_S``), ``p:cancel:<request id>`` set when a request
ends before its jobs ran (client gone, deadline passed; workers drop its jobs unrun), ``p:workers:<model>``
the set of worker names and ``p:hb:<model>:<worker>`` each worker's heartbeat (a key with a TTL of
``DIR_HEARTBEAT_TTL_MS``, refreshed four times per TTL: a worker is live while its key exists). Workers
XDEL a job after XACK, so a stream holds exactly the jobs not yet answered; every job carries its
request's absolute deadline and workers drop expired jobs unrun.

A request's jobs of one pass are added in one MULTI/EXEC, so a waiting worker wakes to all of them at once
instead of to the first; a job is the unit of delivery, redelivery and dead-lettering. A request arriving
while no worker is live is refused at once (``Unavailable``, 503): the live count is read from Redis at
most once per ``LIVE_CHECK_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.batching import BatchPolicy
from service.deadline import Deadline
from service.errors import DeadlineExceeded, InferenceError, QueueFull, ServiceError, Unavailable
from service.queue import SERVE_GRAPH, TileResult, TileSink, dequantize, lane_ref, pack, unpack
from service.redact import Redactor

GROUP = "workers"
#: Seconds a live-worker count is reused by requests (``RedisQueue.check_workers``): one Redis round trip
#: per second at most, however many requests arrive.
LIVE_CHECK_S = 1.0


def stream_key(prefix: str, lane: str, priority: bool = False) -> str:
    """The job stream of ``lane`` (see :func:`service.queue.lane_ref`), or its priority stream."""
    return f"{prefix}:{'prio' if priority else 'jobs'}:{lane}"


def tiles_key(prefix: str, lane: str, priority: bool = False) -> str:
    """The counter of tiles in ``lane``'s job stream (or its priority stream)."""
    return f"{prefix}:{'prio-tiles' if priority else 'tiles'}:{lane}"


def dead_key(prefix: str, lane: str) -> str:
    """The dead-letter stream of ``lane``."""
    return f"{prefix}:dead:{lane}"


def result_key(prefix: str, request_id: str) -> str:
    """The result list of one request."""
    return f"{prefix}:res:{request_id}"


def cancel_key(prefix: str, request_id: str) -> str:
    """Set while a request's remaining jobs are to be dropped unrun."""
    return f"{prefix}:cancel:{request_id}"


def workers_key(prefix: str, model_ref: str) -> str:
    """The set of names of the workers that ever served ``model_ref`` (dead ones are pruned on reads)."""
    return f"{prefix}:workers:{model_ref}"


def heartbeat_key(prefix: str, model_ref: str, worker: str) -> str:
    """One worker's heartbeat: exists while the worker is live."""
    return f"{prefix}:hb:{model_ref}:{worker}"


async def live_workers(client: aioredis.Redis, prefix: str, model_ref: str) -> list[str]:
    """Names of the workers of ``model_ref`` whose heartbeat key exists; prunes the others from the set."""
    members: Any = await client.smembers(workers_key(prefix, model_ref))
    names = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(heartbeat_key(prefix, model_ref, name))
    alive = await pipe.execute()
    dead = [name for name, up in zip(names, alive, strict=True) if not up]
    if dead:
        await client.srem(workers_key(prefix, model_ref), *dead)
    return [name for name, up in zip(names, alive, strict=True) if up]


def job_fields(
    request_id: str,
    start: int,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    enqueued: float,
    deadline: float,
) -> dict[Any, Any]:
    """Stream fields of one job: tiles ``start .. start + n - 1`` of a request (times are Unix seconds;
    ``inputs`` are those tiles' graph inputs, each ``(n, ...)``: e.g. ``image`` (n, 3, T, T) uint8 or
    float32 with ``guide_mean`` (n, K) float32 or ``owned_window`` (n, 4) uint16)."""
    count = len(next(iter(inputs.values())))
    return {
        "req": request_id,
        "idx": start,
        "n": count,
        "enq": repr(enqueued),
        "deadline": repr(deadline),
        "outputs": ",".join(outputs),
        "data": pack({}, inputs),
    }


def job_tiles(fields: dict[Any, Any]) -> int:
    """The tile count ``n`` of a job's stream fields (1 when missing or unreadable: malformed jobs)."""
    try:
        return max(1, int(fields.get(b"n", 1)))
    except (TypeError, ValueError):
        return 1


def queued_tiles(stream_length: int, counter: bytes | str | int | None) -> int:
    """Tiles in a lane from its stream length and ``tiles`` counter: 0 for an empty stream (whatever the
    counter says), else the counter (at least 0)."""
    return 0 if not stream_length else max(0, int(counter or 0))


def _unavailable(url: str, exc: Exception) -> Unavailable:
    redact = Redactor.for_urls(url)
    return Unavailable(f"Redis queue {redact(url)} is unreachable: {redact(str(exc))}")


class RedisQueue:
    """API side of the Redis backend; any number of ``dir-worker`` processes serve the streams.

    A pass of at most ``priority_tiles`` tiles goes to its lane's priority stream (0: none does).
    ``on_live`` is called with the number of live workers whenever it is read from Redis (0 when Redis does
    not answer): the ``dir_live_workers`` gauge.
    """

    def __init__(
        self,
        url: str,
        model_ref: str,
        policy: BatchPolicy,
        prefix: str,
        poll_s: float = 1.0,
        graphs: tuple[str, ...] = (SERVE_GRAPH,),
        priority_tiles: int = 0,
        on_live: Callable[[int], None] | None = None,
    ) -> None:
        self.model_ref = model_ref
        self.url = url
        self._policy = policy
        self._prefix = prefix
        self._poll_s = poll_s
        self._priority_tiles = priority_tiles
        self._on_live = on_live or (lambda count: None)
        lanes = {graph: lane_ref(model_ref, graph) for graph in graphs}
        self._streams = {
            (graph, urgent): stream_key(prefix, lane, urgent)
            for graph, lane in lanes.items()
            for urgent in (False, True)
        }
        self._tiles = {
            (graph, urgent): tiles_key(prefix, lane, urgent)
            for graph, lane in lanes.items()
            for urgent in (False, True)
        }
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=poll_s + 5.0, health_check_interval=10
        )
        self._group_ready = False
        self._live: tuple[float, int] | None = None  # (monotonic time read, live workers)
        self._live_lock = asyncio.Lock()

    async def start(self) -> None:
        """Create the consumer group when Redis answers; a down Redis is retried on the next request."""
        with contextlib.suppress(Unavailable):
            await self._ensure_group()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise ``Unavailable`` when Redis does not answer PING."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._group_ready = False
            raise _unavailable(self.url, exc) from exc

    async def worker_count(self, max_age_s: float = 0.0) -> int:
        """Live workers of this model (heartbeat keys that exist), read from Redis unless a count read less
        than ``max_age_s`` ago is at hand; concurrent callers share one read. Raises ``Unavailable`` when
        Redis does not answer."""
        if self._live is not None and time.monotonic() - self._live[0] < max_age_s:
            return self._live[1]
        async with self._live_lock:
            if self._live is not None and time.monotonic() - self._live[0] < max_age_s:
                return self._live[1]
            try:
                count = len(await live_workers(self._client, self._prefix, self.model_ref))
            except (RedisError, OSError) as exc:
                self._live = None
                self._group_ready = False
                self._on_live(0)
                raise _unavailable(self.url, exc) from exc
            self._live = (time.monotonic(), count)
        self._on_live(count)
        return count

    async def check_workers(self) -> None:
        """Raise ``Unavailable`` (503, Retry-After) when no worker is live, so that a request is refused at
        once instead of waiting for its deadline; the count is at most ``LIVE_CHECK_S`` old."""
        if not await self.worker_count(LIVE_CHECK_S):
            raise Unavailable(
                f"no live dir-worker serves {self.model_ref} (no worker heartbeat in Redis), so nothing "
                "would compute this request: start one with `dir-worker`"
            )

    async def status(self) -> str:
        """One line for /readyz: backlog (every lane) and live workers (heartbeat keys that exist, read now);
        raises ``Unavailable`` when no worker is live, since nothing would compute a request's tiles."""
        try:
            depth = sum([await self.depth(graph) for graph, urgent in self._streams if not urgent])
        except (RedisError, OSError) as exc:
            raise _unavailable(self.url, exc) from exc
        live = await self.worker_count()
        if not live:
            raise Unavailable(
                f"redis reachable, {depth} tiles queued, but no live dir-worker serves {self.model_ref} "
                "(no worker heartbeat): start one with `dir-worker`"
            )
        return f"ok: redis, {depth} tiles queued, {live} live worker(s)"

    async def depth(self, graph: str = SERVE_GRAPH) -> int:
        """Tiles queued or being computed for ``graph`` of this model (both of its streams)."""
        pipe = self._client.pipeline(transaction=False)
        for urgent in (False, True):
            pipe.xlen(self._streams[graph, urgent])
            pipe.get(self._tiles[graph, urgent])
        length, counter, urgent_length, urgent_counter = await pipe.execute()
        return queued_tiles(int(length), counter) + queued_tiles(int(urgent_length), urgent_counter)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        for stream in self._streams.values():
            try:
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise _unavailable(self.url, exc) from exc
            except (RedisError, OSError) as exc:
                raise _unavailable(self.url, exc) from exc
        self._group_ready = True

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: Deadline | float,
        graph: str = SERVE_GRAPH,
        sink: TileSink | None = None,
    ) -> TileResult:
        """XADD the tiles to ``graph``'s stream (its priority stream for at most ``priority_tiles`` tiles) in
        jobs of at most ``max_batch`` (one MULTI/EXEC; each job carries the deadline), then BLPOP results
        until all arrived or the deadline (each job's tiles to ``sink`` as they arrive, when given). Refused
        at once (``Unavailable``) while no worker is live. A request that ends early (deadline, cancelled
        caller, error) sets its cancel key: workers drop its jobs unrun."""
        budget = Deadline.of(deadline)
        budget.check("its tiles were being queued")
        started = time.time()
        wall_deadline = budget.wall()
        request_id = uuid.uuid4().hex
        key = result_key(self._prefix, request_id)
        count = len(next(iter(inputs.values())))
        urgent = count <= self._priority_tiles
        stream = self._streams[graph, urgent]
        queued = False
        try:
            await self.check_workers()
            await self._ensure_group()
            depth = await self.depth(graph)
            if not self._policy.admit(depth, count):
                raise QueueFull(
                    f"Redis queue {self._streams[graph, False]} (with its priority stream) holds {depth} "
                    f"tiles; {count} more exceed the bound {self._policy.bound}"
                )
            pipe = self._client.pipeline(transaction=True)
            size = self._policy.max_batch
            for start in range(0, count, size):
                part = {name: array[start : start + size] for name, array in inputs.items()}
                pipe.xadd(stream, job_fields(request_id, start, part, outputs, started, wall_deadline))
            pipe.incrby(self._tiles[graph, urgent], count)
            # Set before the round trip: a caller cancelled while it is in flight (the jobs may be in the
            # stream already) still sets the cancel key.
            queued = True
            await pipe.execute()
            result = await self._collect(key, count, outputs, budget, sink)
            queued = False
            return result
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._group_ready = False
            raise _unavailable(self.url, exc) from exc
        except ResponseError as exc:
            self._group_ready = False
            raise _unavailable(self.url, exc) from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                pipe = self._client.pipeline(transaction=False)
                pipe.delete(key)
                if queued:
                    ttl = max(1, int(wall_deadline - time.time()) + 1)
                    pipe.set(cancel_key(self._prefix, request_id), b"1", ex=ttl)
                await pipe.execute()

    async def _collect(
        self, key: str, count: int, outputs: list[str], deadline: Deadline, sink: TileSink | None
    ) -> TileResult:
        """BLPOP the first waiting result, then LPOP every other one already there (one round trip); each
        result holds one job's tiles, dequantised straight into the request's output arrays (or, with
        ``sink``, handed to it tile by tile)."""
        stacked: dict[str, np.ndarray] = {}
        answered: set[int] = set()
        remaining = count
        wait_s = 0.0
        compute: dict[str, float] = {}
        while remaining > 0:
            left = deadline.remaining()
            if left <= 0:
                raise deadline.exceeded(f"{remaining} of its {count} tiles were queued or computing")
            item = await self._client.blpop([key], timeout=min(left, self._poll_s))
            if item is None:
                continue
            messages: list[Any] = [item[1]]
            more: Any = await self._client.lpop(key, count)
            messages += more or []
            for message in messages:
                try:
                    header, arrays = unpack(message if isinstance(message, bytes) else message.encode())
                    start, size = int(header["idx"]), int(header.get("n", 1))
                except (ValueError, KeyError) as exc:
                    raise InferenceError(f"malformed result from a worker: {exc}") from exc
                if header.get("error"):
                    if header.get("kind") == "deadline":
                        raise DeadlineExceeded(str(header["error"]))
                    raise InferenceError(str(header["error"]))
                if start in answered:  # a redelivered job answered twice
                    continue
                if not 0 <= start < start + size <= count or any(
                    o not in arrays or len(arrays[o]) != size for o in outputs
                ):
                    raise InferenceError(f"result for tiles {start}..{start + size - 1} does not fit {count}")
                answered.add(start)
                remaining -= size
                if sink is not None:
                    _deliver(sink, start, {name: arrays[name] for name in outputs})
                else:
                    for name in outputs:
                        part = arrays[name]
                        if name not in stacked:
                            stacked[name] = np.empty((count, *part.shape[1:]), dtype=np.float32)
                        dequantize(part, stacked[name][start : start + size])
                wait_s = max(wait_s, float(header.get("wait", 0.0)))
                compute[str(header.get("batch", start))] = float(header.get("compute", 0.0))
        return TileResult(stacked, wait_s, sum(compute.values()))


def _deliver(sink: TileSink, start: int, arrays: dict[str, np.ndarray]) -> None:
    """One job's tiles ``start ..`` (dequantised to float32) to ``sink``; its errors become
    ``InferenceError``."""
    values = {name: dequantize(part) for name, part in arrays.items()}
    for k in range(len(next(iter(values.values())))):
        try:
            sink(start + k, {name: array[k] for name, array in values.items()})
        except Exception as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            raise InferenceError(f"tile {start + k} could not be taken: {message}") from exc
