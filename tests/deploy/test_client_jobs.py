"""Client and ``dir`` CLI over the jobs API, against tests/deploy/fake_jobs.py served on loopback: the switch
by image size, polling with progress and Retry-After, errors of failed/cancelled/expired jobs, cancel on
interrupt, and the CLI writing the same outputs by either path."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.client import (
    DEFAULT_JOB_ABOVE_MP,
    AsyncDirClient,
    DirClient,
    HTTPStatusError,
    JobPolling,
    RequestTimeoutError,
)
from service.client.cli import EXIT_FAILED, EXIT_INTERRUPTED, main
from service.client.jobs import image_megapixels, wants_job
from tests.deploy.conftest import serve
from tests.deploy.fake_jobs import FakeJobServer, image_bytes

BIG = image_bytes(64, 48)  # 0.003072 MP: a job above 0.001 MP
SMALL = image_bytes(8, 6)  # 0.000048 MP


@pytest.fixture
def fake() -> FakeJobServer:
    return FakeJobServer()


@pytest.fixture
def url(fake: FakeJobServer) -> Iterator[str]:
    with serve(fake.app) as base:
        yield base


def test_megapixels_come_from_the_header_and_pick_the_path() -> None:
    assert image_megapixels(BIG) == pytest.approx(64 * 48 / 1e6)
    assert image_megapixels(image_bytes(64, 48, "JPEG")) == pytest.approx(64 * 48 / 1e6)
    assert image_megapixels(b"not an image") is None
    assert wants_job(BIG, 0.001) and not wants_job(SMALL, 0.001)
    assert wants_job(SMALL, 0) and wants_job(b"not an image", 0)
    assert not wants_job(BIG, None) and not wants_job(BIG, math.inf)
    assert not wants_job(b"not an image", 0.001)  # the sync route names the problem
    assert not wants_job(BIG, DEFAULT_JOB_ABOVE_MP)


def test_polling_backoff_grows_to_its_cap_and_retry_after_wins() -> None:
    polling = JobPolling(first=0.5, factor=2.0, longest=3.0)
    assert [polling.delay(n, None) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert polling.delay(1, 7.0) == 7.0


def test_sync_client_switches_by_size_with_identical_results(fake: FakeJobServer, url: str) -> None:
    with DirClient(url, sleep=lambda _s: None) as client:
        pairs = [
            (
                client.restore(BIG, fmt="jpeg", job_above=0.001),
                client.restore(BIG, fmt="jpeg", job_above=None),
            ),
            (client.represent(BIG, output="r0", job_above=0), client.represent(BIG, output="r0")),
            (client.detect(BIG, compare=True, job_above=0.001), client.detect(BIG, compare=True)),
        ]
        small = client.restore(SMALL, job_above=0.001)
    assert fake.log.count("POST /v1/jobs/restore") == 1 and fake.log.count("POST /v1/restore") == 2
    assert "POST /v1/jobs/represent" in fake.log and "POST /v1/jobs/detect" in fake.log
    restored, represented, detected = pairs
    assert restored[0].content == restored[1].content and restored[0].media_type == "image/jpeg"
    assert restored[0].model == restored[1].model and restored[0].timings == restored[1].timings
    assert (
        np.array_equal(represented[0].array, represented[1].array)
        and represented[0].raw == represented[1].raw
    )
    assert detected[0].raw == detected[1].raw and detected[0].unrestored == detected[1].unrestored
    assert small.media_type == "image/png"


@pytest.mark.parametrize(("retry_after", "waits"), [("3", [3.0] * 4), (None, [0.25, 0.375, 0.5625, 0.84375])])
def test_wait_reports_progress_and_honours_retry_after(retry_after: str | None, waits: list[float]) -> None:
    fake = FakeJobServer(tiles=6, step=2, retry_after=retry_after)
    slept: list[float] = []
    progress: list[tuple[int, int]] = []
    with serve(fake.app) as base, DirClient(base, sleep=slept.append) as client:
        result = client.restore(BIG, job_above=0, progress=lambda done, total: progress.append((done, total)))
        assert result.content == client.restore(BIG, job_above=None).content
    assert progress == [(0, 6), (2, 6), (4, 6), (6, 6)]  # queued, then each change once
    assert slept == waits


def test_submit_wait_result_and_cancel_by_hand(fake: FakeJobServer, url: str) -> None:
    with DirClient(url, sleep=lambda _s: None) as client:
        handle = client.submit_job("restore", BIG, fmt="jpeg", mode="denoise")
        assert handle.status.state == "queued" and handle.status.image_size == "64x48"
        with pytest.raises(HTTPStatusError) as early:
            client.job_result(handle)
        assert (
            early.value.status == 409 and early.value.code == "job_not_done" and early.value.retry_after == 1
        )
        waited = client.wait_job(handle)
        again = client.job_result(handle.id)
        assert client.job_status(handle).state == "done"
        client.cancel_job(handle)  # a finished job: its result is deleted
        with pytest.raises(HTTPStatusError) as gone:
            client.job_status(handle.id)
    assert waited == dataclasses.replace(again, latency_s=waited.latency_s)
    assert gone.value.status == 404 and gone.value.code == "job_not_found"


@pytest.mark.parametrize(("status", "code"), [(504, "deadline_exceeded"), (503, "unavailable")])
def test_failed_job_raises_its_own_error_without_retrying(status: int, code: str) -> None:
    fake = FakeJobServer(fail=(status, code))
    with (
        serve(fake.app) as base,
        DirClient(base, sleep=lambda _s: None) as client,
        pytest.raises(HTTPStatusError) as info,
    ):
        client.detect(BIG, job_above=0)
    assert info.value.status == status and info.value.code == code
    assert fake.log.count("GET /v1/jobs/job1/result") == 1


def test_cancelled_job_raises_410(fake: FakeJobServer, url: str) -> None:
    with DirClient(url, sleep=lambda _s: None) as client:
        handle = client.submit_job("represent", BIG)
        client.cancel_job(handle.id)
        with pytest.raises(HTTPStatusError) as info:
            client.wait_job(handle)
    assert info.value.status == 410 and info.value.code == "job_cancelled"


def test_interrupt_while_waiting_cancels_the_job(fake: FakeJobServer, url: str) -> None:
    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    with DirClient(url, sleep=interrupted) as client, pytest.raises(KeyboardInterrupt):
        client.restore(BIG, job_above=0)
    assert fake.log == ["POST /v1/jobs/restore", "DELETE /v1/jobs/job1"]
    assert fake.jobs["job1"]["state"] == "cancelled"


def test_max_wait_cancels_and_raises_timeout(fake: FakeJobServer, url: str) -> None:
    with DirClient(url, polling=JobPolling(max_wait_s=0.0)) as client, pytest.raises(RequestTimeoutError):
        client.restore(BIG, job_above=0)
    assert fake.log[-1] == "DELETE /v1/jobs/job1" and fake.jobs["job1"]["state"] == "cancelled"


async def test_async_client_jobs_and_cancel_on_task_cancellation(fake: FakeJobServer, url: str) -> None:
    waiting = asyncio.Event()

    async def no_wait(_seconds: float) -> None:
        return None

    async def forever(_seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    async with AsyncDirClient(url, sleep=no_wait) as client:
        seen: list[tuple[int, int]] = []
        job = await client.restore(BIG, job_above=0.001, progress=lambda d, t: seen.append((d, t)))
        sync = await client.restore(BIG, job_above=None)
        assert job.content == sync.content and seen[-1] == (4, 4)
    async with AsyncDirClient(url, sleep=forever) as client:
        task = asyncio.create_task(client.detect(BIG, job_above=0))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fake.log[-2:] == ["POST /v1/jobs/detect", "DELETE /v1/jobs/job2"]
    assert fake.jobs["job2"]["state"] == "cancelled"


def test_cli_writes_the_same_outputs_by_job_and_sync(
    fake: FakeJobServer, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.png").write_bytes(BIG)
    (tmp_path / "small.png").write_bytes(SMALL)
    inputs = [str(tmp_path / "big.png"), str(tmp_path / "small.png")]
    outputs: dict[str, tuple[bytes, ...]] = {}
    for above in ("0.001", "inf"):
        out = tmp_path / above
        argv = ["--url", url]
        assert main([*argv, "restore", *inputs, "-o", str(out), "--job-above", above]) == 0
        assert main([*argv, "represent", inputs[0], "-o", str(out / "r.npy"), "--job-above", above]) == 0
        assert main([*argv, "detect", inputs[0], "--json", "--compare", "--job-above", above]) == 0
        captured = capsys.readouterr()
        outputs[above] = (
            (out / "big.png").read_bytes(),
            (out / "small.png").read_bytes(),
            (out / "r.npy").read_bytes(),
            captured.out.replace(str(out), "OUT").encode(),
        )
        assert ("big.png" in captured.err) == (above != "inf"), "a tile bar for each image sent as a job"
    assert outputs["0.001"] == outputs["inf"]
    assert fake.log.count("POST /v1/jobs/restore") == 1 and fake.log.count("POST /v1/restore") == 3


def test_cli_failed_job_exits_1_with_the_server_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeJobServer(fail=(504, "deadline_exceeded"))
    (tmp_path / "big.png").write_bytes(BIG)
    with serve(fake.app) as base:
        code = main(
            [
                "--url",
                base,
                "represent",
                str(tmp_path / "big.png"),
                "-o",
                str(tmp_path / "r.npy"),
                "--job-above",
                "0",
                "--no-progress",
            ]
        )
    assert code == EXIT_FAILED
    captured = capsys.readouterr()
    assert "HTTP 504: job failed: deadline_exceeded" in captured.err and "big.png" not in captured.err


def test_ctrl_c_on_dir_restore_cancels_its_jobs(tmp_path: Path) -> None:
    """SIGINT reaches ``asyncio.run`` as a cancellation: every image's job gets its DELETE before exit."""
    fake = FakeJobServer(tiles=100, step=0)  # never finishes
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(BIG)
    with serve(fake.app) as base:
        command = [sys.executable, "-m", "service.client.cli", "--url", base, "restore", "a.png", "b.png"]
        proc = subprocess.Popen(
            [*command, "-o", "out", "--job-above", "0"],
            cwd=tmp_path,
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(600):
            if fake.log.count("GET /v1/jobs/job1") and fake.log.count("GET /v1/jobs/job2"):
                break
            assert proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err and "interrupted" in err
    assert sorted(line for line in fake.log if line.startswith("DELETE")) == [
        "DELETE /v1/jobs/job1",
        "DELETE /v1/jobs/job2",
    ]
    assert {job["state"] for job in fake.jobs.values()} == {"cancelled"}


def _env() -> dict[str, str]:
    """This process's environment with this tree first on PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
