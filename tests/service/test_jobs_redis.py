"""``/v1/jobs`` with the Redis queue: jobs computed by a ``dir-worker``, their status and result kept in Redis
with the TTL, so another API replica answers for them and can cancel them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis

from service.job_store import record_key, result_key
from service.settings import Settings
from tests.service.conftest import serve
from tests.service.test_jobs import BODY, same_answer, submit, wait_for_state
from tests.service.test_redis import stalled_worker, worker_thread

pytestmark = pytest.mark.redis


async def test_redis_job_result_equals_the_sync_answer(redis_settings: Callable[..., Settings]) -> None:
    settings = redis_settings(job_ttl_s=30)
    probe = redis.Redis.from_url(settings.queue)
    async with serve(settings) as client, serve(settings) as replica:
        with worker_thread(settings):
            sync = await client.post("/v1/restore?format=png", content=BODY)
            job = await submit(client, "/v1/jobs/restore?format=png")
            status = await wait_for_state(replica, job["id"], ("done", "failed"))  # another replica
            result = await replica.get(f"/v1/jobs/{job['id']}/result")
    same_answer(result, sync)
    assert status["state"] == "done" and status["tiles_done"] == status["tiles_total"] > 0
    for key in (record_key(settings.stream_prefix, job["id"]), result_key(settings.stream_prefix, job["id"])):
        assert 0 < probe.pttl(key) <= 30_000
    probe.close()


async def test_delete_on_another_replica_cancels_a_running_job(
    redis_settings: Callable[..., Settings],
) -> None:
    """A job waits behind a stuck worker; DELETE on a second replica marks it cancelled, and the replica
    running it stops it within DIR_JOB_POLL_S: its tile jobs' cancel key is set (workers drop them unrun)."""
    settings = redis_settings(job_poll_s=0.05)
    probe = redis.Redis.from_url(settings.queue)
    async with serve(settings) as client, serve(settings) as replica:
        runner = client.app.state.jobs  # type: ignore[attr-defined]
        with stalled_worker(settings):
            job = await submit(client, "/v1/jobs/restore")
            await wait_for_state(replica, job["id"], ("running",))
            deleted = await replica.delete(f"/v1/jobs/{job['id']}")
            for _ in range(500):
                if not runner.tasks:
                    break
                await asyncio.sleep(0.01)
            stopped = not runner.tasks
            status = (await client.get(f"/v1/jobs/{job['id']}")).json()
            gone = await client.get(f"/v1/jobs/{job['id']}/result")
    assert deleted.status_code == 204 and stopped
    assert status["state"] == "cancelled"
    assert gone.status_code == 410
    assert list(probe.scan_iter(f"{settings.stream_prefix}:cancel:*"))
    probe.close()
