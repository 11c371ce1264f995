"""Client: retry policy (unit, MockTransport) and retries/timeouts/unreachable against a real HTTP server."""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request, Response
from PIL import Image

from service.client import (
    AsyncDirClient,
    DirClient,
    DirClientError,
    HTTPStatusError,
    RequestTimeoutError,
    RetryPolicy,
    ServerUnavailableError,
)
from service.client.retry import parse_retry_after
from tests.deploy.conftest import free_port, serve


def _png(width: int = 8, height: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_parse_retry_after_seconds_date_and_garbage() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-4") == 0.0


def test_policy_backoff_grows_is_capped_and_retry_after_wins() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base=0.5, backoff_max=2.0, jitter=0.0)
    assert [policy.delay(a) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert policy.delay(1, retry_after=5.0) == 5.0
    assert policy.should_retry_status(503, 1, None)
    assert policy.should_retry_status(429, 1, 3.0)
    assert not policy.should_retry_status(429, 1, policy.max_retry_after + 1)
    assert not policy.should_retry_status(500, 1, None)
    assert not policy.should_retry_status(504, 1, None)
    assert not policy.should_retry_status(503, policy.max_attempts, None)


def _scripted(statuses: list[tuple[int, dict[str, str]]]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next (status, headers); 200 + PNG once exhausted."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(statuses):
            status, headers = statuses[len(seen) - 1]
            return httpx.Response(status, headers=headers, json={"message": f"busy ({status})"})
        headers = {
            "content-type": "image/png",
            "x-model": "m/1",
            "server-timing": "decode;dur=2.0, compute;dur=10",
        }
        return httpx.Response(200, headers=headers, content=_png())

    return httpx.MockTransport(handler), seen


def test_retry_policy_honours_retry_after_then_succeeds() -> None:
    transport, seen = _scripted([(503, {"Retry-After": "2"}), (429, {"Retry-After": "1"}), (503, {})])
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff_base=0.25, jitter=0.0)
    with DirClient("http://dir.test", transport=transport, retry=policy, sleep=waits.append) as client:
        result = client.restore(b"not-inspected-by-the-mock")
    assert len(seen) == 4
    assert waits == [2.0, 1.0, 1.0]  # Retry-After twice, then backoff for attempt 3 (0.25 * 2**2)
    assert result.model == "m/1"
    assert result.timings == {"decode": 0.002, "compute": 0.01}
    assert result.media_type == "image/png"
    assert seen[0].url.params["format"] == "png" and "mode" not in seen[0].url.params  # the server's default


def test_restore_and_detect_send_the_mode() -> None:
    transport, seen = _scripted([])
    with DirClient("http://dir.test", transport=transport) as client:
        client.restore(b"x", fmt="jpeg", mode="denoise")
        with pytest.raises(DirClientError):  # the scripted server answers a PNG, not detections
            client.detect(b"x", compare=True, mode="denoise", model="dir-align/1")
    assert seen[0].url.params["format"] == "jpeg" and seen[0].url.params["mode"] == "denoise"
    assert seen[1].url.params["mode"] == "denoise" and seen[1].url.params["compare"] == "true"
    assert "model" not in seen[0].url.params and seen[1].url.params["model"] == "dir-align/1"


def test_retry_gives_up_with_status_and_server_message() -> None:
    transport, seen = _scripted([(503, {"Retry-After": "0"})] * 5)
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=3)
    with (
        DirClient("http://dir.test", transport=transport, retry=policy, sleep=waits.append) as client,
        pytest.raises(HTTPStatusError) as info,
    ):
        client.restore(b"x")
    assert len(seen) == 3
    assert info.value.status == 503
    assert info.value.server_message == "busy (503)"
    assert info.value.retry_after == 0.0


def test_non_retryable_status_and_long_retry_after_are_not_retried() -> None:
    for status, headers in ((415, {}), (429, {"Retry-After": "3600"})):
        transport, seen = _scripted([(status, headers)])
        with (
            DirClient("http://dir.test", transport=transport, sleep=lambda _s: None) as client,
            pytest.raises(HTTPStatusError) as info,
        ):
            client.restore(b"x")
        assert len(seen) == 1
        assert info.value.status == status


def test_api_key_is_sent_as_bearer_token() -> None:
    transport, seen = _scripted([])
    with DirClient("http://dir.test", api_key="s3cret", transport=transport) as client:
        client.restore(b"x")
    assert seen[0].headers["authorization"] == "Bearer s3cret"


class _FlakyServer:
    """A real ASGI app: /v1/restore answers 503 + Retry-After: 0 ``failures`` times, then a PNG."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.release = threading.Event()
        self.app = FastAPI()
        self.app.add_api_route("/healthz", self.healthz, methods=["GET"])
        self.app.add_api_route("/v1/restore", self.restore, methods=["POST"])
        self.app.add_api_route("/v1/represent", self.represent, methods=["POST"])
        self.app.add_api_route("/v1/hang", self.hang, methods=["POST"])

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def restore(self, request: Request) -> Response:
        self.calls += 1
        body = await request.body()
        if self.calls <= self.failures:
            return Response('{"message": "queue full"}', 503, {"Retry-After": "0"}, "application/json")
        assert body == b"payload"
        return Response(_png(), 200, {"X-Model": "dir-restore/test"}, "image/png")

    async def represent(self) -> Response:
        buf = io.BytesIO()
        np.save(buf, np.arange(6, dtype=np.float16).reshape(1, 2, 3))
        return Response(buf.getvalue(), 200, media_type="application/octet-stream")

    async def hang(self) -> Response:
        await asyncio.to_thread(self.release.wait, 30)
        return Response(b"late")


def test_sync_client_retries_against_a_real_server() -> None:
    flaky = _FlakyServer(failures=2)
    with serve(flaky.app) as url, DirClient(url) as client:
        result = client.restore(b"payload")
        rep = client.represent(b"payload")
    assert flaky.calls == 3
    assert result.model == "dir-restore/test"
    assert Image.open(io.BytesIO(result.content)).size == (8, 6)
    assert rep.array.shape == (1, 2, 3)
    assert rep.array.dtype == np.float16


async def test_async_client_retries_against_a_real_server() -> None:
    flaky = _FlakyServer(failures=3)
    with serve(flaky.app) as url:
        async with AsyncDirClient(url, retry=RetryPolicy(max_attempts=5)) as client:
            result = await client.restore(b"payload")
    assert flaky.calls == 4
    assert result.media_type == "image/png"


def test_timeout_raises_request_timeout() -> None:
    flaky = _FlakyServer(failures=0)
    with serve(flaky.app) as url, DirClient(url, timeout=0.5) as client:
        try:
            with pytest.raises(RequestTimeoutError):
                client.request("POST", "/v1/hang")
        finally:
            flaky.release.set()


async def test_unreachable_server_raises_server_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    waits: list[float] = []
    with DirClient(url, retry=RetryPolicy(max_attempts=2), sleep=waits.append) as client:
        with pytest.raises(ServerUnavailableError) as info:
            client.restore(b"x")
        assert not client.healthy()
    assert url in str(info.value)
    assert len(waits) == 1

    async def no_wait(_seconds: float) -> None:
        return None

    async with AsyncDirClient(url, retry=RetryPolicy(max_attempts=2), sleep=no_wait) as aclient:
        with pytest.raises(ServerUnavailableError):
            await aclient.detect(b"x")
