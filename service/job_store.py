"""Where jobs (``/v1/jobs``) keep their status and their result for ``DIR_JOB_TTL_S`` after they end: in
memory (the embedded queue) or in Redis (the Redis queue, so every API replica can answer for a job).

A job's record is its status (:class:`JobRecord`); its result is the finished answer (:class:`Reply`: status
code, media type, headers, body) exactly as the synchronous route sent it, or the error answer of a failed
job. Records of unfinished jobs live as long as the job (Redis: refreshed while it runs, so the record of a
job whose API process died expires); finished ones ``job_ttl_s`` after they end.

The bytes this process holds for jobs are bounded by ``DIR_JOB_STORE_BYTES``: each unfinished job reserves
its decoded pixels and (memory store) an estimate of its result; a finished job's result then counts its
real size until it expires or is deleted. A submission that would pass the bound is refused
(``Unavailable``, 503 with Retry-After), never dropped later.

Redis keys (``p`` = ``DIR_STREAM_PREFIX``): ``p:job:<id>`` the record (JSON) and ``p:job-result:<id>`` the
result (:func:`service.queue.pack`: a JSON header and the body bytes), both with the TTL.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import Unavailable
from service.queue import pack, unpack

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
#: States a job does not leave.
ENDED = ("done", "failed", "cancelled")


@dataclass
class Reply:
    """A finished answer: what a synchronous route sends, and what a job stores as its result."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


def iso_after(seconds: float) -> str:
    """UTC ``seconds`` from now, ISO 8601."""
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


@dataclass
class JobRecord:
    """One job's status (the body of ``GET /v1/jobs/{id}`` less ``result``); times are ISO 8601 UTC;
    ``tiles_total`` counts tile runs over all passes of the job's restore mode."""

    id: str
    task: str
    image_size: str
    tiles_total: int
    state: JobState = "queued"
    tiles_done: int = 0
    created: str = field(default_factory=now_iso)
    started: str | None = None
    finished: str | None = None
    expires: str | None = None
    timings: dict[str, float] | None = None
    error: dict[str, str] | None = None

    def to_json(self) -> str:
        """The record as JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: bytes | str) -> JobRecord:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


class JobStore(Protocol):
    """Job records and results, kept ``ttl_s`` after a job ends."""

    ttl_s: float

    async def create(self, record: JobRecord, reserve: int) -> None:
        """Store a new job's record, reserving ``reserve`` bytes; ``Unavailable`` when they do not fit."""

    async def update(self, record: JobRecord) -> None:
        """Store ``record`` (progress, state) of an unfinished job that is still stored."""

    async def request_cancel(self, record: JobRecord) -> None:
        """Mark an unfinished job cancelled (``DELETE``): its record says so at once, and the process
        running it stops it when it next looks (:meth:`cancel_requested`)."""

    async def cancel_requested(self, job_id: str) -> bool:
        """True once :meth:`request_cancel` ran for the job."""
        ...

    async def finish(self, record: JobRecord, reply: Reply | None) -> None:
        """Store an ended job's record (``expires`` set here) and its result (None: cancelled)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None (unknown or expired)."""
        ...

    async def result(self, job_id: str) -> Reply | None:
        """The stored result, or None."""
        ...

    async def delete(self, job_id: str) -> None:
        """Forget the job and its result."""

    async def close(self) -> None:
        """Close connections."""


class _Ledger:
    """Bytes this process holds for jobs, per job, against ``bound``."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.held: dict[str, int] = {}

    def reserve(self, job_id: str, size: int) -> None:
        used = sum(self.held.values())
        if used + size > self.bound:
            raise Unavailable(
                f"the job store holds {used} bytes; this job needs {size} more, over the bound of "
                f"{self.bound} bytes (DIR_JOB_STORE_BYTES): retry once running jobs end or their results "
                "expire"
            )
        self.held[job_id] = size

    def settle(self, job_id: str, size: int) -> None:
        if job_id in self.held:
            self.held[job_id] = size

    def release(self, job_id: str) -> None:
        self.held.pop(job_id, None)


class MemoryJobStore:
    """Records and results in this process (the embedded queue); expired ones are swept on each access."""

    def __init__(self, ttl_s: float, bound: int) -> None:
        self.ttl_s = ttl_s
        self.ledger = _Ledger(bound)
        self._records: dict[str, JobRecord] = {}
        self._results: dict[str, Reply] = {}
        self._expiry: dict[str, float] = {}
        self._cancelled: set[str] = set()

    def _sweep(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, at in self._expiry.items() if at <= now]:
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        self._records.pop(job_id, None)
        self._results.pop(job_id, None)
        self._expiry.pop(job_id, None)
        self._cancelled.discard(job_id)
        self.ledger.release(job_id)

    async def create(self, record: JobRecord, reserve: int) -> None:
        self._sweep()
        self.ledger.reserve(record.id, reserve)
        self._records[record.id] = record

    async def update(self, record: JobRecord) -> None:
        if record.id in self._records:
            self._records[record.id] = record

    async def request_cancel(self, record: JobRecord) -> None:
        self._cancelled.add(record.id)
        await self.finish(record, None)

    async def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancelled

    async def finish(self, record: JobRecord, reply: Reply | None) -> None:
        if record.id not in self._records:
            return
        record.expires = iso_after(self.ttl_s)
        self._records[record.id] = record
        self._expiry[record.id] = time.monotonic() + self.ttl_s
        if reply is None:
            self.ledger.settle(record.id, 0)
        else:
            self._results[record.id] = reply
            self.ledger.settle(record.id, len(reply.body))

    async def get(self, job_id: str) -> JobRecord | None:
        self._sweep()
        return self._records.get(job_id)

    async def result(self, job_id: str) -> Reply | None:
        self._sweep()
        return self._results.get(job_id)

    async def delete(self, job_id: str) -> None:
        self._forget(job_id)

    async def close(self) -> None:
        """Nothing to close."""


def record_key(prefix: str, job_id: str) -> str:
    """The Redis key of a job's record."""
    return f"{prefix}:job:{job_id}"


def result_key(prefix: str, job_id: str) -> str:
    """The Redis key of a job's result."""
    return f"{prefix}:job-result:{job_id}"


def cancel_key(prefix: str, job_id: str) -> str:
    """Set (with the TTL) once a job is cancelled by ``DELETE``."""
    return f"{prefix}:job-cancel:{job_id}"


class RedisJobStore:
    """Records and results in Redis with a TTL (the Redis queue); this process's ledger counts the pixels of
    its own unfinished jobs. Redis errors become ``Unavailable``."""

    def __init__(self, url: str, prefix: str, ttl_s: float, bound: int) -> None:
        self.ttl_s = ttl_s
        self.ledger = _Ledger(bound)
        self._prefix = prefix
        self._client = aioredis.Redis.from_url(url)
        self._url = url

    def _ttl(self) -> int:
        """The TTL in milliseconds (Redis ``PX``)."""
        return max(1, round(self.ttl_s * 1000))

    async def _call(self, what: str, *commands: tuple[str, tuple[Any, ...], dict[str, Any]]) -> list[Any]:
        try:
            pipe = self._client.pipeline(transaction=True)
            for name, args, kwargs in commands:
                getattr(pipe, name)(*args, **kwargs)
            return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the job store (Redis) failed while {what}: {exc}") from exc

    async def create(self, record: JobRecord, reserve: int) -> None:
        self.ledger.reserve(record.id, reserve)
        key = record_key(self._prefix, record.id)
        try:
            await self._call("storing a job", ("set", (key, record.to_json()), {"px": self._ttl()}))
        except Unavailable:
            self.ledger.release(record.id)
            raise

    async def update(self, record: JobRecord) -> None:
        key = record_key(self._prefix, record.id)
        await self._call("storing a job", ("set", (key, record.to_json()), {"px": self._ttl(), "xx": True}))

    async def request_cancel(self, record: JobRecord) -> None:
        key = cancel_key(self._prefix, record.id)
        await self._call("cancelling a job", ("set", (key, b"1"), {"px": self._ttl()}))
        await self.finish(record, None)

    async def cancel_requested(self, job_id: str) -> bool:
        (found,) = await self._call("reading a job", ("exists", (cancel_key(self._prefix, job_id),), {}))
        return bool(found)

    async def finish(self, record: JobRecord, reply: Reply | None) -> None:
        self.ledger.release(record.id)
        record.expires = iso_after(self.ttl_s)
        key = record_key(self._prefix, record.id)
        (stored,) = await self._call("storing a job", ("exists", (key,), {}))
        if not stored:  # deleted meanwhile
            return
        commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("set", (key, record.to_json()), {"px": self._ttl()})
        ]
        if reply is not None:
            header = {"status": reply.status, "media_type": reply.media_type, "headers": reply.headers}
            body = np.frombuffer(reply.body, dtype=np.uint8)
            message = pack(header, {"body": body})
            commands.append(("set", (result_key(self._prefix, record.id), message), {"px": self._ttl()}))
        await self._call("storing a job's result", *commands)

    async def get(self, job_id: str) -> JobRecord | None:
        (text,) = await self._call("reading a job", ("get", (record_key(self._prefix, job_id),), {}))
        return None if text is None else JobRecord.from_json(text)

    async def result(self, job_id: str) -> Reply | None:
        (message,) = await self._call(
            "reading a job's result", ("get", (result_key(self._prefix, job_id),), {})
        )
        if message is None:
            return None
        header, arrays = unpack(message)
        return Reply(arrays["body"].tobytes(), header["media_type"], header["headers"], int(header["status"]))

    async def delete(self, job_id: str) -> None:
        self.ledger.release(job_id)
        prefix = self._prefix
        keys = (record_key(prefix, job_id), result_key(prefix, job_id), cancel_key(prefix, job_id))
        await self._call("deleting a job", ("delete", keys, {}))

    async def close(self) -> None:
        await self._client.aclose()
