"""The synchronous HTTP client of the DiR-ISP service.

:class:`DirClient` blocks; ``service.client.async_client.AsyncDirClient`` has the same methods as
coroutines. Both share request building and response parsing (:class:`ClientBase`). Images above
``job_above`` megapixels go through the jobs API (``/v1/jobs/{task}``: submit, poll with progress, fetch
the result); the result is the same either way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx

from service.client.errors import DirClientError
from service.client.jobs import (
    DEFAULT_JOB_ABOVE_MP,
    JobHandle,
    JobPolling,
    JobStatus,
    Progress,
    ProgressReporter,
    wants_job,
)
from service.client.protocol import DEFAULT_URL, Call, ClientBase, Decode, ImageInput, JobResult, R, job_id
from service.client.protocol import server_timings as server_timings
from service.client.results import DetectResult, Representation, RestoreResult
from service.client.retry import NO_RETRY, RetryPolicy, parse_retry_after


class DirClient(ClientBase):
    """Blocking client. Use as a context manager or call :meth:`close`.

    ``timeout`` (seconds) bounds each attempt; 429/503 answers and refused connections are retried per
    ``retry``; jobs are polled per ``polling``. ``transport`` and ``sleep`` exist for tests and custom
    networking.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        polling: JobPolling | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry or RetryPolicy(), polling or JobPolling())
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> DirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(
        self, method: str, path: str, *, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> tuple[httpx.Response, float]:
        """Send with retries (``policy``, default the client's); return the successful response and the
        latency of its attempt (s)."""
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                self._sleep(self.failed_attempt(exc, attempt, f"{method} {path}", policy))
                continue
            wait = self.retry_delay(response, attempt, policy)
            if wait is None:
                return response, time.perf_counter() - start
            self._sleep(wait)

    def restore(
        self,
        image: ImageInput,
        *,
        fmt: str = "png",
        mode: str | None = None,
        model: str | None = None,
        job_above: float | None = DEFAULT_JOB_ABOVE_MP,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Restore one camera image; ``fmt`` is ``png`` or ``jpeg``; ``mode`` ``full`` (DiR, corrects the
        ISP's colour and tone too), ``denoise`` (keeps the camera's colour and tone) or None (the server's
        default, ``default_restore_mode`` of :meth:`models`; the result's headers name the mode run);
        ``model`` the served entry that runs (``name`` or ``name/version``; None: the server's default; the
        same keyword on :meth:`represent` and :meth:`detect`).
        Above ``job_above`` megapixels (0: always, None: never) it runs as a job reporting
        ``progress(tiles_done, tiles_total)``."""
        call = Call.build("restore", image, fmt=fmt, mode=mode, model=model)
        return self._run(call, job_above, progress, self.restore_result)

    def represent(
        self,
        image: ImageInput,
        *,
        output: str = "r_plus",
        model: str | None = None,
        job_above: float | None = DEFAULT_JOB_ABOVE_MP,
        progress: Progress | None = None,
    ) -> Representation:
        """One DiR array of an image (``r_plus``, ``r0`` or ``pilot``; C x H/s x W/s float32); a job above
        ``job_above`` megapixels, as in :meth:`restore`."""
        call = Call.build("represent", image, output=output, model=model)
        return self._run(call, job_above, progress, self.represent_result)

    def detect(
        self,
        image: ImageInput,
        *,
        compare: bool = False,
        mode: str | None = None,
        model: str | None = None,
        job_above: float | None = DEFAULT_JOB_ABOVE_MP,
        progress: Progress | None = None,
    ) -> DetectResult:
        """Detections on the image restored in ``mode`` (``full``, ``denoise``, None: the server's default),
        and on the unrestored input when ``compare``; a job above ``job_above`` megapixels, as in
        :meth:`restore`."""
        call = Call.build("detect", image, compare=compare, mode=mode, model=model)
        return self._run(call, job_above, progress, self.detect_result)

    def _run(self, call: Call, job_above: float | None, progress: Progress | None, decode: Decode[R]) -> R:
        """``call`` synchronously, or as a job when its image is above ``job_above`` megapixels."""
        if not wants_job(call.body, job_above):
            response, latency = self.request("POST", f"/v1/{call.task}", **call.kwargs())
            return decode(response, latency)
        start = time.perf_counter()
        response = self._wait(self._submit(call), progress)
        return decode(response, time.perf_counter() - start)

    def submit_job(self, task: str, image: ImageInput, **params: Any) -> JobHandle:
        """Submit ``task`` (restore, represent, detect) on ``image`` as a job, with the keyword arguments of
        the matching method (``fmt``, ``mode``, ``output``, ``compare``, ``model``)."""
        return self._submit(Call.build(task, image, **params))

    def _submit(self, call: Call) -> JobHandle:
        response, _ = self.request("POST", f"/v1/jobs/{call.task}", **call.kwargs())
        return self.job_handle(response)

    def job_status(self, job: JobHandle | str) -> JobStatus:
        """The job's current status (:class:`HTTPStatusError` 404 once unknown or expired)."""
        return self.parse_job_status(self.request("GET", f"/v1/jobs/{job_id(job)}")[0])

    def job_result(self, job: JobHandle | str) -> JobResult:
        """A finished job's result, typed as the sync call's; :class:`HTTPStatusError` with the job's own
        status and error when it failed, 409 while it runs, 410 when cancelled, 404 once expired."""
        handle = job if isinstance(job, JobHandle) else self._handle(job)
        response, latency = self.request("GET", f"{handle.path}/result")
        return self.decoder(handle.task)(response, latency)

    def _handle(self, job_id: str) -> JobHandle:
        status = self.job_status(job_id)
        return JobHandle(job_id, status.task, status)

    def cancel_job(self, job: JobHandle | str) -> None:
        """Cancel a queued or running job, or delete a finished one's result."""
        self.request("DELETE", f"/v1/jobs/{job_id(job)}")

    def wait_job(self, job: JobHandle, *, progress: Progress | None = None) -> JobResult:
        """Poll ``job`` until it ends (``progress(tiles_done, tiles_total)`` on each change) and return its
        result, as :meth:`job_result`; an interrupt while waiting cancels the job, then re-raises."""
        start = time.perf_counter()
        response = self._wait(job, progress)
        return self.decoder(job.task)(response, time.perf_counter() - start)

    def _wait(self, job: JobHandle, progress: Progress | None) -> httpx.Response:
        """The result answer of ``job`` once it ends; cancels the job on an interrupt or after
        ``max_wait_s``."""
        try:
            status = self._poll(job, ProgressReporter(progress))
            policy = NO_RETRY if status.state == "failed" else None
            return self.request("GET", f"{job.path}/result", policy=policy)[0]
        except KeyboardInterrupt:
            self._cancel_quietly(job)
            raise

    def _poll(self, job: JobHandle, reporter: ProgressReporter) -> JobStatus:
        status, retry_after, poll = job.status, job.retry_after, 0
        give_up = self.polling.give_up_at(time.monotonic())
        while True:
            reporter.update(status)
            if status.terminal:
                return status
            if time.monotonic() >= give_up:
                self._cancel_quietly(job)
                raise self.job_timeout(job)
            poll += 1
            self._sleep(self.polling.delay(poll, retry_after))
            response, _ = self.request("GET", job.path)
            status = self.parse_job_status(response)
            retry_after = parse_retry_after(response.headers.get("retry-after"))

    def _cancel_quietly(self, job: JobHandle) -> None:
        """One DELETE of ``job``; a failure is ignored (the server expires the job after its TTL anyway)."""
        with contextlib.suppress(DirClientError):
            self.request("DELETE", job.path, policy=NO_RETRY)

    def models(self) -> Any:
        """The server's /v1/models listing (JSON)."""
        return self.request("GET", "/v1/models")[0].json()

    def healthy(self) -> bool:
        """True when /healthz answers 2xx (one attempt, no retries)."""
        try:
            return self._http.get("/healthz").is_success
        except httpx.HTTPError:
            return False
