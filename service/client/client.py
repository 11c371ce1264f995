"""Synchronous and asynchronous HTTP clients for the DiR-ISP service.

Both clients share request building and response parsing (:class:`_Protocol`); they differ only in the
transport and in how they wait between attempts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from service.client.errors import DirClientError, HTTPStatusError, RequestTimeoutError, ServerUnavailableError
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


def _error_message(response: httpx.Response) -> str:
    """The server's error message from its JSON body, or the body text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return json.dumps(body)


def _mode(mode: str | None) -> dict[str, str]:
    """The ``mode`` query parameter, left out for None (the server's default mode)."""
    return {} if mode is None else {"mode": mode}


class _Protocol:
    """What both clients share: base URL, headers, request description and response decoding."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.headers = {"User-Agent": "dir-client"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def failed_attempt(self, exc: httpx.HTTPError, attempt: int, what: str) -> float:
        """Seconds to wait before retrying a transport failure, or raise the client error it maps to.

        Only failures to connect are retried: the request never reached the server.
        """
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            if self.retry.should_retry_connect(attempt):
                return self.retry.delay(attempt)
            raise ServerUnavailableError(self.base_url, str(exc) or type(exc).__name__) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise RequestTimeoutError(f"{what}: no answer within the timeout ({exc})") from exc
        raise DirClientError(f"{what}: {exc}") from exc

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """None for a 2xx answer; seconds to wait for a retryable one; else raise :class:`HTTPStatusError`."""
        if response.is_success:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if self.retry.should_retry_status(response.status_code, attempt, retry_after):
            return self.retry.delay(attempt, retry_after)
        raise HTTPStatusError(response.status_code, _error_message(response), retry_after)

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

    @staticmethod
    def image_request(image: ImageInput) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for an image body."""
        body, media_type = read_image(image)
        return {"content": body, "headers": {"Content-Type": media_type}}


class DirClient(_Protocol):
    """Blocking client. Use as a context manager or call :meth:`close`.

    ``timeout`` (seconds) bounds each attempt; 429/503 answers and refused connections are retried per
    ``retry``. ``transport`` and ``sleep`` exist for tests and custom networking.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry or RetryPolicy())
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

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        """Send with retries; return the successful response and the latency of its attempt (s)."""
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                self._sleep(self.failed_attempt(exc, attempt, f"{method} {path}"))
                continue
            wait = self.retry_delay(response, attempt)
            if wait is None:
                return response, time.perf_counter() - start
            self._sleep(wait)

    def restore(self, image: ImageInput, *, fmt: str = "png", mode: str | None = None) -> RestoreResult:
        """Restore one camera image; ``fmt`` is ``png`` or ``jpeg``; ``mode`` ``full`` (DiR, corrects the
        ISP's colour and tone too), ``denoise`` (keeps the camera's colour and tone) or None (the server's
        default, ``default_restore_mode`` of :meth:`models`; the result's headers name the mode run)."""
        response, latency = self.request(
            "POST", "/v1/restore", params={"format": fmt, **_mode(mode)}, **self.image_request(image)
        )
        return self.restore_result(response, latency)

    def represent(self, image: ImageInput, *, output: str = "r_plus") -> Representation:
        """One DiR array of an image (``r_plus``, ``r0`` or ``pilot``; C x H/s x W/s float32)."""
        response, latency = self.request(
            "POST", "/v1/represent", params={"format": "npy", "outputs": output}, **self.image_request(image)
        )
        return self.represent_result(response, latency)

    def detect(self, image: ImageInput, *, compare: bool = False, mode: str | None = None) -> DetectResult:
        """Detections on the image restored in ``mode`` (``full``, ``denoise``, None: the server's default),
        and on the unrestored input when ``compare``."""
        params = {**_mode(mode), **({"compare": "true"} if compare else {})}
        response, latency = self.request("POST", "/v1/detect", params=params, **self.image_request(image))
        return self.detect_result(response, latency)

    def models(self) -> Any:
        """The server's /v1/models listing (JSON)."""
        return self.request("GET", "/v1/models")[0].json()

    def healthy(self) -> bool:
        """True when /healthz answers 2xx (one attempt, no retries)."""
        try:
            return self._http.get("/healthz").is_success
        except httpx.HTTPError:
            return False


class AsyncDirClient(_Protocol):
    """Asynchronous client with the same methods as :class:`DirClient` (coroutines)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry or RetryPolicy())
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

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        """Send with retries; return the successful response and the latency of its attempt (s)."""
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                await self._sleep(self.failed_attempt(exc, attempt, f"{method} {path}"))
                continue
            wait = self.retry_delay(response, attempt)
            if wait is None:
                return response, time.perf_counter() - start
            await self._sleep(wait)

    async def restore(self, image: ImageInput, *, fmt: str = "png", mode: str | None = None) -> RestoreResult:
        """Restore one camera image; ``fmt`` is ``png`` or ``jpeg``; ``mode`` ``full`` (DiR, corrects the
        ISP's colour and tone too), ``denoise`` (keeps the camera's colour and tone) or None (the server's
        default, ``default_restore_mode`` of :meth:`models`; the result's headers name the mode run)."""
        response, latency = await self.request(
            "POST", "/v1/restore", params={"format": fmt, **_mode(mode)}, **self.image_request(image)
        )
        return self.restore_result(response, latency)

    async def represent(self, image: ImageInput, *, output: str = "r_plus") -> Representation:
        """One DiR array of an image (``r_plus``, ``r0`` or ``pilot``; C x H/s x W/s float32)."""
        response, latency = await self.request(
            "POST", "/v1/represent", params={"format": "npy", "outputs": output}, **self.image_request(image)
        )
        return self.represent_result(response, latency)

    async def detect(
        self, image: ImageInput, *, compare: bool = False, mode: str | None = None
    ) -> DetectResult:
        """Detections on the image restored in ``mode`` (``full``, ``denoise``, None: the server's default),
        and on the unrestored input when ``compare``."""
        params = {**_mode(mode), **({"compare": "true"} if compare else {})}
        response, latency = await self.request(
            "POST", "/v1/detect", params=params, **self.image_request(image)
        )
        return self.detect_result(response, latency)

    async def models(self) -> Any:
        """The server's /v1/models listing (JSON)."""
        return (await self.request("GET", "/v1/models"))[0].json()

    async def healthy(self) -> bool:
        """True when /healthz answers 2xx (one attempt, no retries)."""
        try:
            return (await self._http.get("/healthz")).is_success
        except httpx.HTTPError:
            return False
