"""What the synchronous and asynchronous clients share: request bodies and parameters, retry decisions and
response decoding (the clients differ only in the transport and in how they wait)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.client.errors import DirClientError, HTTPStatusError, RequestTimeoutError, ServerUnavailableError
from service.client.jobs import TASKS, JobHandle, JobPolling, JobStatus
from service.client.results import Detection, DetectResult, Representation, RestoreResult
from service.client.retry import RetryPolicy, parse_retry_after

ImageInput = str | os.PathLike[str] | bytes

DEFAULT_URL = "http://127.0.0.1:8000"

MODEL_HEADER = "x-model"

_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def read_image(image: ImageInput) -> tuple[bytes, str]:
    """Body bytes and Content-Type for a path or raw bytes."""
    if isinstance(image, bytes):
        return image, "application/octet-stream"
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DirClientError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return data, _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def server_timings(headers: httpx.Headers) -> dict[str, float]:
    """Server-reported timings in seconds from ``Server-Timing: name;dur=<ms>, ...``."""
    out: dict[str, float] = {}
    for metric in headers.get("server-timing", "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key == "dur":
                try:
                    out[name] = float(value) / 1000.0
                except ValueError:
                    continue
    return out


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    """The server's error code and message from its JSON error body (``ErrorBody``), or None and the body
    text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, response.text.strip() or response.reason_phrase
    if not isinstance(body, dict):
        return None, json.dumps(body)
    code = body.get("error") if isinstance(body.get("error"), str) else None
    for key in ("message", "detail", "error"):
        if isinstance(body.get(key), str):
            return code, str(body[key])
    return code, json.dumps(body)


def _mode(mode: str | None) -> dict[str, str]:
    """The ``mode`` query parameter, left out for None (the server's default mode)."""
    return {} if mode is None else {"mode": mode}


def _model(model: str | None) -> dict[str, str]:
    """The ``model`` query parameter (a served entry, ``name`` or ``name/version``), left out for None (the
    server's default entry)."""
    return {} if model is None else {"model": model}


def restore_params(*, fmt: str = "png", mode: str | None = None, model: str | None = None) -> dict[str, str]:
    """Query of /v1/restore: ``fmt`` png or jpeg; ``mode`` full, denoise or None (the server's default);
    ``model`` the served entry (None: the server's default)."""
    return {"format": fmt, **_mode(mode), **_model(model)}


def represent_params(*, output: str = "r_plus", model: str | None = None) -> dict[str, str]:
    """Query of /v1/represent: one array (``r_plus``, ``r0`` or ``pilot``) as ``.npy`` of ``model``."""
    return {"format": "npy", "outputs": output, **_model(model)}


def detect_params(
    *, compare: bool = False, mode: str | None = None, model: str | None = None
) -> dict[str, str]:
    """Query of /v1/detect: restore ``mode`` (with ``model``) before the detector; ``compare`` also detects
    on the input."""
    return {**_mode(mode), **_model(model), **({"compare": "true"} if compare else {})}


_PARAMS: dict[str, Callable[..., dict[str, str]]] = {
    "restore": restore_params,
    "represent": represent_params,
    "detect": detect_params,
}


@dataclass(frozen=True)
class Call:
    """One image request: ``task`` (restore, represent, detect), its query and its body."""

    task: str
    params: dict[str, str]
    body: bytes
    media_type: str

    @classmethod
    def build(cls, task: str, image: ImageInput, **params: Any) -> Call:
        """The request of ``task`` on ``image`` with the keyword arguments of the matching sync method."""
        if task not in _PARAMS:
            raise DirClientError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        body, media_type = read_image(image)
        return cls(task, _PARAMS[task](**params), body, media_type)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for this call's query and body."""
        return {"params": self.params, "content": self.body, "headers": {"Content-Type": self.media_type}}


JobResult = RestoreResult | Representation | DetectResult
R = TypeVar("R", RestoreResult, Representation, DetectResult)
#: Decodes a successful answer of one task, given the latency (s) to report.
Decode = Callable[[httpx.Response, float], R]


def job_id(job: JobHandle | str) -> str:
    """The id of a job given as its handle or its id."""
    return job.id if isinstance(job, JobHandle) else job


class ClientBase:
    """What both clients share: base URL, headers, request description and response decoding."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy, polling: JobPolling) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.polling = polling
        self.headers = {"User-Agent": "dir-client"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def failed_attempt(
        self, exc: httpx.HTTPError, attempt: int, what: str, policy: RetryPolicy | None = None
    ) -> float:
        """Seconds to wait before retrying a transport failure, or raise the client error it maps to.

        Only failures to connect are retried: the request never reached the server.
        """
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            policy = policy or self.retry
            if policy.should_retry_connect(attempt):
                return policy.delay(attempt)
            raise ServerUnavailableError(self.base_url, str(exc) or type(exc).__name__) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise RequestTimeoutError(f"{what}: no answer within the timeout ({exc})") from exc
        raise DirClientError(f"{what}: {exc}") from exc

    def retry_delay(
        self, response: httpx.Response, attempt: int, policy: RetryPolicy | None = None
    ) -> float | None:
        """None for a 2xx answer; seconds to wait for a retryable one; else raise :class:`HTTPStatusError`."""
        if response.is_success:
            return None
        policy = policy or self.retry
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if policy.should_retry_status(response.status_code, attempt, retry_after):
            return policy.delay(attempt, retry_after)
        code, message = _error_body(response)
        raise HTTPStatusError(response.status_code, message, retry_after, code)

    @staticmethod
    def restore_result(response: httpx.Response, latency_s: float) -> RestoreResult:
        """Decode a /v1/restore answer."""
        return RestoreResult(
            content=response.content,
            media_type=response.headers.get("content-type", "application/octet-stream"),
            model=response.headers.get(MODEL_HEADER),
            timings=server_timings(response.headers),
            latency_s=latency_s,
        )

    @staticmethod
    def represent_result(response: httpx.Response, latency_s: float) -> Representation:
        """Decode a /v1/represent answer (``.npy`` bytes)."""
        try:
            return Representation.from_npy(
                response.content,
                response.headers.get(MODEL_HEADER),
                server_timings(response.headers),
                latency_s,
            )
        except ValueError as exc:
            raise DirClientError(f"server sent an unreadable .npy body: {exc}") from exc

    @staticmethod
    def detect_result(response: httpx.Response, latency_s: float) -> DetectResult:
        """Decode a /v1/detect answer (JSON)."""
        try:
            body = response.json()
            detections = [Detection.from_json(d) for d in body["detections"]]
            baseline = body.get("input_detections")
            unrestored = None if baseline is None else [Detection.from_json(d) for d in baseline]
            timings = {str(k): float(v) / 1000.0 for k, v in body.get("timings_ms", {}).items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DirClientError(f"server sent an unexpected /v1/detect body: {exc}") from exc
        return DetectResult(
            detections=detections,
            unrestored=unrestored,
            model=body.get("model"),
            detector=body.get("detector"),
            timings=timings,
            latency_s=latency_s,
            raw=body,
        )

    def decoder(self, task: str) -> Callable[[httpx.Response, float], JobResult]:
        """The decoder of ``task``'s answer (the sync route's and the job result's are the same)."""
        decoders: dict[str, Callable[[httpx.Response, float], JobResult]] = {
            "restore": self.restore_result,
            "represent": self.represent_result,
            "detect": self.detect_result,
        }
        if task not in decoders:
            raise DirClientError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        return decoders[task]

    @staticmethod
    def parse_job_status(response: httpx.Response) -> JobStatus:
        """Decode a job status answer (JSON)."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DirClientError(f"server sent a job status that is not JSON: {exc}") from exc
        return JobStatus.from_json(body)

    def job_timeout(self, job: JobHandle) -> RequestTimeoutError:
        """The error of a job that outlived ``polling.max_wait_s`` (raised after it was cancelled)."""
        waited = self.polling.max_wait_s
        return RequestTimeoutError(f"job {job.id} did not finish within {waited} s; cancelled it")

    def job_handle(self, response: httpx.Response) -> JobHandle:
        """Decode a ``202 Accepted`` job submission."""
        status = self.parse_job_status(response)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return JobHandle(id=status.id, task=status.task, status=status, retry_after=retry_after)
