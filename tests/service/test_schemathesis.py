"""A bounded schemathesis run: cases generated from openapi.yaml for every operation, sent in process.

Schemathesis (a dev extra) only generates the requests (seeded, a fixed number per operation); they go through
the same in-process httpx client as the other API tests, with the app's lifespan running. Every answer must be
below 500 (``/v1/detect`` and ``/v1/jobs/detect`` without a detector: their documented 503), and every 4xx
in the error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from service.settings import Settings
from tests.service.conftest import serve

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (a dev extra: pip install -e '.[dev]')"
)

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
#: Generated cases per operation: keeps the run to a few seconds on the fixture model.
EXAMPLES = 25


def generated_requests() -> list[dict[str, Any]]:
    """Transport keyword arguments (requests style) of :data:`EXAMPLES` seeded cases of every operation."""
    schema = schemathesis.openapi.from_dict(yaml.safe_load(OPENAPI.read_text()))
    requests: list[dict[str, Any]] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def collect(case: Any) -> None:
            requests.append(case.as_transport_kwargs(base_url="http://service"))

        collect()
    return requests


def _text(value: str) -> str:
    """``value`` with lone surrogates (which no client can encode) replaced."""
    return value.encode("utf-8", "replace").decode()


def _part(part: tuple[Any, ...]) -> tuple[Any, ...]:
    """A multipart part ``(filename, value[, content type])`` whose value httpx can send: bytes as they are,
    anything else (str, numbers, JSON) as UTF-8 text."""
    filename, value, *rest = part
    if not isinstance(value, bytes):
        value = str(value).encode("utf-8", "replace")
    return (None if filename is None else _text(filename), value, *rest)


def httpx_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Requests-style keyword arguments -> ``httpx.AsyncClient.request`` ones."""
    out: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "params": kwargs.get("params") or None,
        "headers": {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "connection"},
    }
    if kwargs.get("files"):
        out["files"] = [(_text(name), _part(part)) for name, part in kwargs["files"]]
        if isinstance(kwargs.get("data"), dict):
            out["data"] = kwargs["data"]
    elif isinstance(kwargs.get("data"), bytes | str):
        out["content"] = kwargs["data"]
    elif "json" in kwargs:
        out["json"] = kwargs["json"]
    return out


async def test_bounded_schemathesis_run_has_no_server_errors(make_settings: Callable[..., Settings]) -> None:
    requests = generated_requests()
    assert {r["url"].removeprefix("http://service") for r in requests} >= {
        "/v1/restore",
        "/v1/represent",
        "/v1/detect",
        "/v1/models",
    }
    problems = []
    statuses: dict[int, int] = {}
    async with serve(make_settings()) as client:
        for kwargs in requests:
            response = await client.request(**httpx_arguments(kwargs))
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            where = f"{kwargs['method']} {kwargs['url']} {kwargs.get('params')}: {response.status_code}"
            no_detector = kwargs["url"].endswith("/detect") and response.status_code == 503  # and jobs
            if response.status_code >= 500 and not no_detector:
                problems.append(f"{where} {response.text[:200]}")
            elif response.status_code >= 400:
                body = response.json()
                if set(body) != {"error", "message"}:
                    problems.append(f"{where} not in the error shape: {response.text[:200]}")
    assert not problems, "\n".join(problems)
    assert len(statuses) > 2, statuses
