"""Jobs on the client side: when an image goes as a job, the job status the server reports, and how often to
poll it (the server's ``/v1/jobs`` API, docs/SERVICE.md)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from service.client.errors import DirClientError

#: Images above this many megapixels go as jobs by default (a 12-50 MP camera JPEG does; a 2 MP one does not).
DEFAULT_JOB_ABOVE_MP = 4.0

TASKS = ("restore", "represent", "detect")
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})

#: ``progress(tiles_done, tiles_total)``, called whenever a job's tile count changes.
Progress = Callable[[int, int], None]


def image_megapixels(body: bytes) -> float | None:
    """Width x height / 1e6 of an encoded image, read from its header by Pillow (no pixel is decoded); None
    when Pillow cannot identify it (the server then names the problem)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as image:
                width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return width * height / 1e6


def wants_job(body: bytes, job_above: float | None) -> bool:
    """True when ``body`` goes as a job: its megapixels exceed ``job_above`` (0: always; None, inf: never)."""
    if job_above is None or math.isinf(job_above):
        return False
    if job_above <= 0:
        return True
    megapixels = image_megapixels(body)
    return megapixels is not None and megapixels > job_above


@dataclass(frozen=True)
class JobStatus:
    """``GET /v1/jobs/{id}``: the job's state (queued, running, done, failed, cancelled), tile progress,
    ISO 8601 times, server timings (seconds) once known, and the error of a failed job."""

    id: str
    task: str
    state: str
    tiles_done: int
    tiles_total: int
    image_size: str
    created: str
    started: str | None
    finished: str | None
    expires: str | None
    timings: dict[str, float] | None
    error: dict[str, str] | None
    result: str | None

    @property
    def terminal(self) -> bool:
        """True once the job is done, failed or cancelled (its state no longer changes)."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, body: Any) -> JobStatus:
        """Parse the server's JSON job status; :class:`DirClientError` naming the problem when malformed."""
        try:
            timings = body.get("timings")
            return cls(
                id=str(body["id"]),
                task=str(body["task"]),
                state=str(body["state"]),
                tiles_done=int(body["tiles_done"]),
                tiles_total=int(body["tiles_total"]),
                image_size=str(body.get("image_size", "")),
                created=str(body.get("created", "")),
                started=body.get("started"),
                finished=body.get("finished"),
                expires=body.get("expires"),
                timings=None if timings is None else {str(k): float(v) for k, v in timings.items()},
                error=body.get("error"),
                result=body.get("result"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DirClientError(f"server sent an unexpected job status: {exc!r}") from exc


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id, task, the status the server answered at submission and that answer's
    ``Retry-After`` (seconds; None: none), which sets the first poll's wait."""

    id: str
    task: str
    status: JobStatus
    retry_after: float | None = None

    @property
    def path(self) -> str:
        """``/v1/jobs/{id}``: the job's status (GET) and cancellation (DELETE)."""
        return f"/v1/jobs/{self.id}"


@dataclass(frozen=True)
class JobPolling:
    """How :meth:`wait_job` polls: ``first`` seconds after submission, growing by ``factor`` per poll up to
    ``longest``; a ``Retry-After`` on the status answer replaces that wait. ``max_wait_s`` (None: no bound;
    the server expires jobs after its ``job_ttl_s``) cancels a job that has not finished by then."""

    first: float = 0.25
    factor: float = 1.5
    longest: float = 2.0
    max_wait_s: float | None = None

    def give_up_at(self, now: float) -> float:
        """The monotonic time after which a job waited on since ``now`` is cancelled (inf: never)."""
        return math.inf if self.max_wait_s is None else now + self.max_wait_s

    def delay(self, poll: int, retry_after: float | None) -> float:
        """Seconds to wait before poll ``poll`` (1-based)."""
        if retry_after is not None:
            return retry_after
        return min(self.longest, self.first * self.factor ** (poll - 1))


class ProgressReporter:
    """Calls ``progress(tiles_done, tiles_total)`` when the tile counts of successive statuses change."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.last: tuple[int, int] | None = None

    def update(self, status: JobStatus) -> None:
        """Report ``status``'s counts if they differ from the last ones reported."""
        counts = (status.tiles_done, status.tiles_total)
        if self.progress is not None and counts != self.last:
            self.last = counts
            self.progress(*counts)
