"""The asynchronous HTTP client of the DiR-ISP service: :class:`DirClient`'s methods as coroutines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
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
from service.client.results import DetectResult, Representation, RestoreResult
from service.client.retry import NO_RETRY, RetryPolicy, parse_retry_after


class AsyncDirClient(ClientBase):
    """Asynchronous client with the same methods as :class:`~service.client.client.DirClient`; a task
    cancelled while it waits on a job cancels the job (DELETE) before the cancellation propagates."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        polling: JobPolling | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry or RetryPolicy(), polling or JobPolling())
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncDirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> tuple[httpx.Response, float]:
        """Send with retries (``policy``, default the client's); return the successful response and the
        latency of its attempt (s)."""
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                await self._sleep(self.failed_attempt(exc, attempt, f"{method} {path}", policy))
                continue
            wait = self.retry_delay(response, attempt, policy)
            if wait is None:
                return response, time.perf_counter() - start
            await self._sleep(wait)

    async def restore(
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
        default); ``model`` the served entry that runs (``name`` or ``name/version``; None: the server's
        default; the same keyword on :meth:`represent` and :meth:`detect`). Above ``job_above`` megapixels
        (0: always, None: never) it runs as a job reporting
        ``progress(tiles_done, tiles_total)``."""
        call = Call.build("restore", image, fmt=fmt, mode=mode, model=model)
        return await self._run(call, job_above, progress, self.restore_result)

    async def represent(
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
        return await self._run(call, job_above, progress, self.represent_result)

    async def detect(
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
        and on the unrestored input when ``compare``; a job above ``job_above`` megapixels."""
        call = Call.build("detect", image, compare=compare, mode=mode, model=model)
        return await self._run(call, job_above, progress, self.detect_result)

    async def _run(
        self, call: Call, job_above: float | None, progress: Progress | None, decode: Decode[R]
    ) -> R:
        """``call`` synchronously, or as a job when its image is above ``job_above`` megapixels."""
        if not wants_job(call.body, job_above):
            response, latency = await self.request("POST", f"/v1/{call.task}", **call.kwargs())
            return decode(response, latency)
        start = time.perf_counter()
        response = await self._wait(await self._submit(call), progress)
        return decode(response, time.perf_counter() - start)

    async def submit_job(self, task: str, image: ImageInput, **params: Any) -> JobHandle:
        """Submit ``task`` (restore, represent, detect) on ``image`` as a job, with the keyword arguments of
        the matching method (``fmt``, ``mode``, ``output``, ``compare``, ``model``)."""
        return await self._submit(Call.build(task, image, **params))

    async def _submit(self, call: Call) -> JobHandle:
        response, _ = await self.request("POST", f"/v1/jobs/{call.task}", **call.kwargs())
        return self.job_handle(response)

    async def job_status(self, job: JobHandle | str) -> JobStatus:
        """The job's current status (:class:`HTTPStatusError` 404 once unknown or expired)."""
        return self.parse_job_status((await self.request("GET", f"/v1/jobs/{job_id(job)}"))[0])

    async def job_result(self, job: JobHandle | str) -> JobResult:
        """A finished job's result, typed as the sync call's; errors as ``DirClient.job_result``."""
        if isinstance(job, str):
            job = JobHandle(job, (status := await self.job_status(job)).task, status)
        response, latency = await self.request("GET", f"{job.path}/result")
        return self.decoder(job.task)(response, latency)

    async def cancel_job(self, job: JobHandle | str) -> None:
        """Cancel a queued or running job, or delete a finished one's result."""
        await self.request("DELETE", f"/v1/jobs/{job_id(job)}")

    async def wait_job(self, job: JobHandle, *, progress: Progress | None = None) -> JobResult:
        """Poll ``job`` until it ends (``progress(tiles_done, tiles_total)`` on each change) and return its
        result; cancelling the waiting task cancels the job, then re-raises."""
        start = time.perf_counter()
        response = await self._wait(job, progress)
        return self.decoder(job.task)(response, time.perf_counter() - start)

    async def _wait(self, job: JobHandle, progress: Progress | None) -> httpx.Response:
        """The result answer of ``job`` once it ends; cancels the job when cancelled or after
        ``max_wait_s``."""
        try:
            status = await self._poll(job, ProgressReporter(progress))
            policy = NO_RETRY if status.state == "failed" else None
            return (await self.request("GET", f"{job.path}/result", policy=policy))[0]
        except (KeyboardInterrupt, asyncio.CancelledError):
            await self._cancel_quietly(job)
            raise

    async def _poll(self, job: JobHandle, reporter: ProgressReporter) -> JobStatus:
        status, retry_after, poll = job.status, job.retry_after, 0
        give_up = self.polling.give_up_at(time.monotonic())
        while True:
            reporter.update(status)
            if status.terminal:
                return status
            if time.monotonic() >= give_up:
                await self._cancel_quietly(job)
                raise self.job_timeout(job)
            poll += 1
            await self._sleep(self.polling.delay(poll, retry_after))
            response, _ = await self.request("GET", job.path)
            status = self.parse_job_status(response)
            retry_after = parse_retry_after(response.headers.get("retry-after"))

    async def _cancel_quietly(self, job: JobHandle) -> None:
        """One DELETE of ``job``, finished even if this task is cancelled again meanwhile; a failure is
        ignored (the server expires the job after its TTL anyway)."""
        delete = asyncio.ensure_future(self._delete(job))
        while not delete.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(delete)

    async def _delete(self, job: JobHandle) -> None:
        with contextlib.suppress(DirClientError):
            await self.request("DELETE", job.path, policy=NO_RETRY)

    async def models(self) -> Any:
        """The server's /v1/models listing (JSON)."""
        return (await self.request("GET", "/v1/models"))[0].json()

    async def healthy(self) -> bool:
        """True when /healthz answers 2xx (one attempt, no retries)."""
        try:
            return (await self._http.get("/healthz")).is_success
        except httpx.HTTPError:
            return False
