"""The jobs a ``dir-worker`` reads from a graph's Redis streams (``Job``, ``decode_job``) and what it answers
(``Answer``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.queue import unpack
from service.redis_queue import job_tiles


@dataclass
class Job:
    """One decoded job of ``graph``, read from ``stream``: tiles ``start .. start + count - 1`` of a
    request; ``inputs`` their graph inputs, each ``(count, ...)`` (``image`` (count, 3, T, T) sRGB, uint8 or
    float32 [0, 1]; ``guide_mean`` (count, K) float32 for a two-pass serving graph; ``owned_window``
    (count, 4) uint16 for a guide graph); Unix seconds."""

    graph: str
    stream: str
    entry_id: str
    request_id: str
    start: int
    enqueued: float
    deadline: float
    outputs: list[str]
    inputs: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        """Tiles in the job."""
        return len(next(iter(self.inputs.values())))


@dataclass
class Answer:
    """What one job gets back: ``header`` (``idx``, ``n``, timings, or ``error``) and its outputs, each
    ``(job.count, ...)`` float32 as the model returned them (quantised when sent); none for an error."""

    job: Job
    header: dict[str, Any]
    values: dict[str, np.ndarray] = field(default_factory=dict)


def decode_job(graph: str, stream: str, entry_id: str, fields: dict[Any, Any]) -> Job:
    """Stream entry -> ``Job``; raises ``ValueError``/``KeyError`` on a malformed entry."""
    _, inputs = unpack(fields[b"data"])
    shapes = {name: (a.shape, str(a.dtype)) for name, a in inputs.items()}
    if not inputs or any(a.dtype not in (np.uint8, np.uint16, np.float32) for a in inputs.values()):
        raise ValueError(f"job inputs {shapes}: expected at least one, each uint8, uint16 or float32")
    count = job_tiles(fields)
    if any(a.ndim < 1 or len(a) != count for a in inputs.values()):
        raise ValueError(f"job inputs {shapes}: expected {count} tiles in each")
    return Job(
        graph,
        stream,
        entry_id,
        fields[b"req"].decode(),
        int(fields[b"idx"]),
        float(fields[b"enq"]),
        float(fields[b"deadline"]),
        fields[b"outputs"].decode().split(","),
        inputs,
    )
