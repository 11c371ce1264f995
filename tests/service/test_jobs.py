"""``/v1/jobs`` on the embedded queue: submit, poll, result (the synchronous route's exact answer), cancel,
expiry, the same refusals as the synchronous routes, the store's bound; and the synchronous deadline that
scales with the image's cost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.api.state import ServiceState
from service.deadline import Deadline
from service.errors import DeadlineExceeded
from service.settings import Settings
from tests.service.conftest import header_png, noise_png, serve

#: A 150x230 noise image (15 tiles of 64 px on the fixture entry).
BODY = noise_png(150, 230, seed=7)
#: Settings under which a batch waits ten minutes to fill: a submitted job stays running.
STALLED: dict[str, Any] = {"max_batch": 1000, "max_queue_delay_ms": 600_000}


async def wait_for_state(client: httpx.AsyncClient, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    """Poll the job until its state is one of ``states`` (10 s at most)."""
    for _ in range(1000):
        status = (await client.get(f"/v1/jobs/{job_id}")).json()
        if status["state"] in states:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {states}: {status}")


async def submit(client: httpx.AsyncClient, path: str, body: bytes = BODY) -> dict[str, Any]:
    response = await client.post(path, content=body)
    assert response.status_code == 202, response.text
    status = response.json()
    assert response.headers["location"] == f"/v1/jobs/{status['id']}"
    return status


def same_answer(job: httpx.Response, sync: httpx.Response) -> None:
    """Status, media type, body and every X-* header but the timings equal."""
    assert job.status_code == sync.status_code == 200, job.text
    assert job.headers["content-type"] == sync.headers["content-type"]
    assert job.content == sync.content
    names = {k for k in sync.headers if k.startswith("x-")}
    assert names and {k for k in job.headers if k.startswith("x-")} == names
    assert all(job.headers[k] == sync.headers[k] for k in names)


@pytest.mark.parametrize(
    ("task", "query"),
    [
        ("restore", "?format=png"),
        ("restore", "?mode=full"),
        ("restore", "?mode=denoise"),
        ("represent", "?outputs=r_plus"),
    ],
)
async def test_job_result_equals_the_sync_answer(
    make_settings: Callable[..., Settings], task: str, query: str
) -> None:
    async with serve(make_settings(max_batch=4)) as client:
        tiles = client.app.state.service.restorer.plan(150, 230).count  # type: ignore[attr-defined]
        sync = await client.post(f"/v1/{task}{query}", content=BODY)
        submitted = await submit(client, f"/v1/jobs/{task}{query}")
        assert submitted["state"] in ("queued", "running") and submitted["result"] is None
        status = await wait_for_state(client, submitted["id"], ("done", "failed"))
        result = await client.get(status["result"])
    same_answer(result, sync)
    passes = 1 if "denoise" in query else 2
    assert status["state"] == "done" and status["tiles_total"] == tiles * passes
    assert status["tiles_done"] == status["tiles_total"]
    assert status["image_size"] == "230x150" and status["error"] is None
    assert status["started"] and status["finished"] and status["expires"]
    assert set(status["timings"]) == {"decode_s", "queue_s", "compute_s", "encode_s"}
    assert status["timings"]["compute_s"] > 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs/restore", b"not an image"),
        ("/v1/jobs/restore", header_png(60_000, 60_000)),
        ("/v1/jobs/restore?quality=0", BODY),
        ("/v1/jobs/represent?outputs=r_plus,r0", BODY),
        ("/v1/jobs/represent?outputs=nope&format=json", BODY),
        ("/v1/jobs/detect", BODY),
    ],
)
async def test_bad_input_is_refused_at_submission_as_sync(
    make_settings: Callable[..., Settings], path: str, body: bytes
) -> None:
    async with serve(make_settings()) as client:
        job = await client.post(path, content=body)
        sync = await client.post(path.replace("/jobs", ""), content=body)
    assert 400 <= job.status_code < 600 and job.status_code != 202
    assert (job.status_code, job.json()) == (sync.status_code, sync.json())


async def test_result_before_done_409_then_delete_cancels_and_drops_tiles(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings(**STALLED)) as client:
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        job = await submit(client, "/v1/jobs/restore")
        running = await wait_for_state(client, job["id"], ("running",))
        for _ in range(500):  # its pass-1 tiles wait for a batch that never fills
            if state.queue.depth:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        early = await client.get(f"/v1/jobs/{job['id']}/result")
        deleted = await client.delete(f"/v1/jobs/{job['id']}")
        cancelled = (await client.get(f"/v1/jobs/{job['id']}")).json()
        gone = await client.get(f"/v1/jobs/{job['id']}/result")
        depth = state.queue.depth  # type: ignore[attr-defined]
    assert running["tiles_done"] == 0
    assert (
        early.status_code == 409 and early.json()["error"] == "job_not_done" and early.headers["retry-after"]
    )
    assert deleted.status_code == 204
    assert cancelled["state"] == "cancelled" and cancelled["finished"] and cancelled["result"] is None
    assert gone.status_code == 410 and gone.json()["error"] == "job_cancelled"
    assert depth == 0  # the cancelled job's waiting tiles were dropped


async def test_expired_deleted_and_unknown_jobs_are_404(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(job_ttl_s=0.3)) as client:
        first = await submit(client, "/v1/jobs/restore?mode=denoise")
        second = await submit(client, "/v1/jobs/restore?mode=denoise")
        await wait_for_state(client, first["id"], ("done",))
        await wait_for_state(client, second["id"], ("done",))
        deleted = await client.delete(f"/v1/jobs/{second['id']}")
        after_delete = await client.get(f"/v1/jobs/{second['id']}/result")
        await asyncio.sleep(0.4)
        expired = await client.get(f"/v1/jobs/{first['id']}")
        expired_result = await client.get(f"/v1/jobs/{first['id']}/result")
        unknown = await client.delete("/v1/jobs/no-such-job")
    assert deleted.status_code == 204 and after_delete.status_code == 404
    for response in (expired, expired_result, unknown):
        assert response.status_code == 404 and response.json()["error"] == "job_not_found"


async def test_a_job_the_store_cannot_hold_is_refused_503(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(job_store_bytes=200_000)) as client:
        refused = await client.post("/v1/jobs/restore", content=BODY)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "DIR_JOB_STORE_BYTES" in refused.json()["message"]


async def test_a_failed_job_answers_its_error(make_settings: Callable[..., Settings]) -> None:
    """A job past ``DIR_JOB_TIMEOUT_S`` (its batch never fills) fails: its result is the 504 error body."""
    async with serve(make_settings(job_timeout_s=0.3, **STALLED)) as client:
        job = await submit(client, "/v1/jobs/restore")
        status = await wait_for_state(client, job["id"], ("done", "failed"))
        result = await client.get(f"/v1/jobs/{job['id']}/result")
    assert status["state"] == "failed" and status["error"]["code"] == "deadline_exceeded"
    assert "DIR_JOB_TIMEOUT_S" in status["error"]["message"] and status["result"] is None
    assert result.status_code == 504 and result.json() == {
        "error": "deadline_exceeded",
        "message": status["error"]["message"],
    }


def test_deadline_extends_with_cost() -> None:
    deadline = Deadline.after(10.0)
    deadline.extend(5.0, "RULE")
    assert 14.5 < deadline.remaining() <= 15.0 and deadline.budget_s == 15.0
    assert "15 s deadline (RULE)" in deadline.exceeded("decoding").message


async def test_sync_deadline_scales_with_cost_and_points_to_jobs(
    make_settings: Callable[..., Settings],
) -> None:
    """Base 0.05 s + 0.1 s per megapixel of cost: 15 tiles of 64 px x 2 passes = 0.123 MP -> 0.0623 s,
    named in the 504 with the way out (a job)."""
    settings = make_settings(request_timeout_s=0.05, request_timeout_per_mp_s=0.1, **STALLED)
    async with serve(settings) as client:
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        response = await client.post("/v1/restore", content=BODY)
    assert response.status_code == 504
    message = response.json()["message"]
    assert (
        "0.06229 s deadline (DIR_REQUEST_TIMEOUT_S + DIR_REQUEST_TIMEOUT_PER_MP_S 0.1 s x 0.123 MP)"
        in message
    )
    assert "POST /v1/jobs/restore" in message
    budget = state.deadline(0.0)
    state.scale_deadline(budget, 16 * 512 * 512)
    assert budget.budget_s == pytest.approx(0.05 + 0.1 * 16 * 512 * 512 / 1e6)
    with pytest.raises(DeadlineExceeded):
        budget.check("testing")  # started at perf_counter 0: long past
