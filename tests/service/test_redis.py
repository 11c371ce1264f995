"""The Redis Streams backend against a real Redis: end to end, a worker SIGKILLed mid-batch, dead letters,
Redis outages (503, then recovery without restart), queue bound and deadline, small requests overtaking a
costly one (priority streams), the live-worker gauge and the fail-fast refusal without a worker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

import service.redis_queue
from modelstore.store import resolve_entry
from service.batching import BatchPolicy
from service.metrics import Metrics
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, WINDOW_INPUT, lane_ref, unpack
from service.redis_queue import (
    GROUP,
    LIVE_CHECK_S,
    RedisQueue,
    dead_key,
    heartbeat_key,
    job_fields,
    live_workers,
    result_key,
    stream_key,
    tiles_key,
    workers_key,
)
from service.settings import Settings
from service.store import RestoreModel
from service.tiling import choose_tile, extract_tiles, owned_window, plan_tiles
from service.worker import DEAD_CLAIM_IDLE_MS, Worker
from tests.service.conftest import free_port, noise_png, restore_latencies, serve, start_redis_server
from tests.service.fixture_model import build_entry

pytestmark = pytest.mark.redis
MODEL = "dir-restore/0.0.1"
GUIDE = lane_ref(MODEL, GUIDE_GRAPH)
# face.png (276x276) on the fixture entry (64-px tiles overlapping by 16): the default sides 64 and 128 tie
# on pixels, so it runs as 9 tiles of 128 px.
FACE_TILES = choose_tile(276, 276, (64, 128), overlap=16, multiple=4).count
FACE_JOBS = math.ceil(FACE_TILES / Settings().max_batch)  # per pass: jobs hold at most max_batch tiles
# face.png is a small request: both its passes go to the priority streams.
assert Settings().priority_tiles >= FACE_TILES


@contextlib.contextmanager
def worker_thread(
    settings: Settings, metrics: Metrics | None = None, consumer: str = "thread-worker"
) -> Iterator[Worker]:
    """An in-process ``Worker`` serving until the block exits; the block starts once it has beaten once."""
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue, socket_connect_timeout=1.0, socket_timeout=10.0)
    worker = Worker(client, model, settings, metrics or Metrics(), consumer=consumer)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    for _ in range(100):
        if client.exists(worker.heartbeat_key):
            break
        time.sleep(0.01)
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=30)
        client.close()


@contextlib.contextmanager
def stalled_worker(settings: Settings, name: str = "stalled") -> Iterator[None]:
    """A live worker that reads nothing (its heartbeat key, set for a minute, and its name in the worker
    set): requests are admitted and their jobs wait, as behind a stuck worker."""
    client = redis.Redis.from_url(settings.queue)
    beat = heartbeat_key(settings.stream_prefix, MODEL, name)
    client.set(beat, b"1", ex=60)
    client.sadd(workers_key(settings.stream_prefix, MODEL), name)
    try:
        yield
    finally:
        client.delete(beat)
        client.close()


def spawn_worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    """``dir-worker`` as a real subprocess (same interpreter)."""
    code = "import sys; from service.cli import worker; worker(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--name", name, "--log-level", "warning"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def small_png(dataset: Callable[[str], Path]) -> bytes:
    return (dataset("cset14") / "face.png").read_bytes()  # 276x276


async def test_redis_backend_matches_embedded(
    make_settings: Callable[..., Settings], redis_settings: Callable[..., Settings], small_png: bytes
) -> None:
    async with serve(make_settings()) as client:
        embedded = await client.post("/v1/restore", content=small_png)
        embedded_latent = await client.post("/v1/represent", content=small_png)
    settings = redis_settings()
    metrics = Metrics()
    async with serve(settings) as client:
        with worker_thread(settings, metrics):
            responses = await asyncio.gather(
                *[client.post("/v1/restore", content=small_png) for _ in range(6)]
            )
            latent = await client.post("/v1/represent", content=small_png)
    for response in responses:
        assert response.status_code == 200, response.text
        a = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO(embedded.content)), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
    np.testing.assert_allclose(
        np.load(io.BytesIO(latent.content)), np.load(io.BytesIO(embedded_latent.content)), atol=1e-4
    )
    # Two passes: every tile once through the guide graph, once through the serving graph, in their own
    # batches (each lane's batch sizes sum to the tiles it ran).
    for lane in (MODEL, GUIDE):
        assert metrics.batch_size.labels(lane)._sum.get() == 7 * FACE_TILES  # type: ignore[attr-defined]
    client_redis = redis.Redis.from_url(settings.queue)
    for lane in (MODEL, GUIDE):
        for urgent in (False, True):
            assert client_redis.xlen(stream_key(settings.stream_prefix, lane, urgent)) == 0
    client_redis.close()


async def test_ready_only_with_a_live_worker(redis_settings: Callable[..., Settings]) -> None:
    """/readyz counts workers by their heartbeat keys: 503 naming the missing worker with none, the right
    count with one and two, 503 again once they stopped (a clean exit deletes the key)."""
    settings = redis_settings()
    async with serve(settings) as client:
        alone = await client.get("/readyz")
        with worker_thread(settings, consumer="one"):
            one = await client.get("/readyz")
            with worker_thread(settings, consumer="two"):
                two = await client.get("/readyz")
        after = await client.get("/readyz")
    assert alone.status_code == 503 and alone.json()["ready"] is False
    assert "no live dir-worker serves dir-restore/0.0.1" in alone.json()["checks"]["queue"]
    assert one.status_code == 200 and one.json()["checks"]["queue"].endswith(", 1 live worker(s)")
    assert two.status_code == 200 and two.json()["checks"]["queue"].endswith(", 2 live worker(s)")
    assert after.status_code == 503


def test_pass_one_results_carry_window_sums_not_feature_maps(
    redis_settings: Callable[..., Settings], prefix: str, dataset: Callable[[str], Path]
) -> None:
    """What a worker RPUSHes for a pass-1 job is its tiles' (n, K) float32 window sums (a few hundred bytes
    per tile), not their (n, K, T/s, T/s) guide features; the sums equal the model's own reduction of the
    same tiles."""
    settings = redis_settings()
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    assert model.guide is not None
    client = redis.Redis.from_url(settings.queue)
    worker = Worker(client, model, settings, Metrics(), consumer="sums-test")
    worker.ensure_group()
    pixels = np.asarray(Image.open(dataset("cset14") / "face.png").convert("RGB"))
    grid = plan_tiles(*pixels.shape[:2], tile=64, overlap=16, multiple=4)
    tiles = extract_tiles(pixels, grid)
    windows = np.array([owned_window(grid, k, model.guide.scale) for k in range(grid.count)], np.uint16)
    now = time.time()
    size = 5  # jobs of 5 tiles (the last one shorter)
    for k in range(0, grid.count, size):
        inputs = {"image": tiles[k : k + size], WINDOW_INPUT: windows[k : k + size]}
        client.xadd(stream_key(prefix, GUIDE), job_fields("sums", k, inputs, [GUIDE_SUM], now, now + 60))
    for _ in range(200):
        if not client.xlen(stream_key(prefix, GUIDE)):
            break
        worker.step(block_ms=20)
    messages: Any = client.lrange(result_key(prefix, "sums"), 0, -1)
    client.close()
    assert len(messages) == math.ceil(grid.count / size)
    channels = int(model.guide.outputs[0].shape[1])
    feature_map_bytes = channels * (64 // model.guide.scale) ** 2 * 4
    sums = np.full((grid.count, channels), np.nan, dtype=np.float32)
    for message in messages:
        header, arrays = unpack(message)
        start, n = header["idx"], header["n"]
        assert list(arrays) == [GUIDE_SUM] and n == min(size, grid.count - start)
        assert arrays[GUIDE_SUM].shape == (n, channels) and arrays[GUIDE_SUM].dtype == np.float32
        assert len(message) < 512 + n * channels * 4 < n * feature_map_bytes
        sums[start : start + n] = arrays[GUIDE_SUM]
    expected = model.run({"image": tiles, WINDOW_INPUT: windows}, [GUIDE_SUM], GUIDE_GRAPH)[GUIDE_SUM]
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


async def test_redis_serves_a_single_pass_entry(
    make_settings: Callable[..., Settings],
    redis_settings: Callable[..., Settings],
    small_png: bytes,
    tmp_path: Path,
) -> None:
    """An entry exported before two-pass serving (one graph, one input) runs single-pass on both backends."""
    store = build_entry(tmp_path, two_pass=False).parents[1]
    async with serve(make_settings(model_store=store)) as client:
        embedded = await client.post("/v1/restore", content=small_png)
    settings = redis_settings(model_store=store)
    metrics = Metrics()
    async with serve(settings) as client:
        with worker_thread(settings, metrics):
            response = await client.post("/v1/restore", content=small_png)
    assert embedded.status_code == response.status_code == 200, response.text
    a = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(embedded.content)), dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    assert metrics.batch_size.labels(MODEL)._sum.get() == FACE_TILES  # type: ignore[attr-defined]
    assert metrics.batch_size.labels(GUIDE)._sum.get() == 0  # type: ignore[attr-defined]


async def test_redis_denoise_mode_has_its_own_stream(
    make_settings: Callable[..., Settings], redis_settings: Callable[..., Settings], small_png: bytes
) -> None:
    """mode=denoise: one pass through the denoise graph's own stream, the same image as embedded."""
    async with serve(make_settings()) as client:
        embedded = await client.post("/v1/restore?mode=denoise", content=small_png)
    settings = redis_settings()
    metrics = Metrics()
    async with serve(settings) as client:
        with worker_thread(settings, metrics):
            response = await client.post("/v1/restore?mode=denoise", content=small_png)
    assert embedded.status_code == response.status_code == 200, response.text
    assert response.headers["x-restore-mode"] == "denoise"
    a = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(embedded.content)), dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    denoise_lane = lane_ref(MODEL, DENOISE_GRAPH)
    assert metrics.batch_size.labels(denoise_lane)._sum.get() == FACE_TILES  # type: ignore[attr-defined]
    for lane in (MODEL, GUIDE):
        assert metrics.batch_size.labels(lane)._sum.get() == 0  # type: ignore[attr-defined]


async def test_worker_killed_mid_batch_loses_nothing(
    redis_settings: Callable[..., Settings],
    fixture_store: Path,
    redis_url: str,
    prefix: str,
    small_png: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker SIGKILLed holding jobs: once its heartbeat expires (DIR_HEARTBEAT_TTL_MS, 2 s) a live
    worker claims them, well before DIR_CLAIM_IDLE_MS (30 s by default): every request done within 5 s."""
    settings = redis_settings(request_timeout_s=120)
    stream = stream_key(
        prefix, GUIDE, priority=True
    )  # pass 1 of the two-pass fixture: the doomed worker holds it
    base = {
        "DIR_QUEUE": redis_url,
        "DIR_MODEL_STORE": str(fixture_store),
        "DIR_STREAM_PREFIX": prefix,
        "DIR_INTRA_OP_THREADS": "1",
    }
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    # Worker 1 takes every queued job (FACE_JOBS per request) into one batch, then waits (10 min) for it
    # to fill: it holds them.
    doomed = spawn_worker({**base, "DIR_MAX_BATCH": "100000", "DIR_MAX_QUEUE_DELAY_MS": "600000"}, "doomed")
    rescuer: subprocess.Popen[bytes] | None = None
    probe = redis.Redis.from_url(redis_url)
    try:
        for _ in range(600):  # requests are refused (503) until a worker is live
            if probe.exists(heartbeat_key(prefix, MODEL, "doomed")):
                break
            await asyncio.sleep(0.05)
        async with serve(settings) as client:
            requests = [asyncio.create_task(client.post("/v1/restore", content=small_png)) for _ in range(4)]
            held = 0
            for _ in range(1200):
                info = probe.xpending(stream, GROUP) if probe.exists(stream) else {"consumers": []}
                held = sum(c["pending"] for c in info["consumers"] if c["name"] in (b"doomed", "doomed"))
                if held >= 4 * FACE_JOBS or (held and probe.xlen(stream) == held):
                    break
                await asyncio.sleep(0.05)
            assert held > 0, "worker 1 never took a batch"
            # The rescuer starts (default DIR_CLAIM_IDLE_MS) while worker 1 is alive and holds every job.
            rescuer = spawn_worker({**base, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}, "rescuer")
            for _ in range(600):
                if probe.exists(heartbeat_key(prefix, MODEL, "rescuer")):
                    break
                await asyncio.sleep(0.05)
            assert probe.exists(heartbeat_key(prefix, MODEL, "doomed"))
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            killed = time.monotonic()
            responses = await asyncio.gather(*requests)
            rescued_s = time.monotonic() - killed
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        assert rescued_s < 5.0
        assert probe.xlen(stream) == probe.xlen(stream_key(prefix, MODEL, priority=True)) == 0
    finally:
        probe.close()
        for proc in (doomed, rescuer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    exposition = Metrics().exposition().decode()  # what the API's /metrics serves in multiprocess mode
    redelivered = [line for line in exposition.splitlines() if line.startswith("dir_redeliveries_total ")]
    assert redelivered and float(redelivered[0].split()[1]) >= held


@pytest.mark.parametrize("urgent", [False, True], ids=["jobs", "priority"])
def test_dead_worker_jobs_are_claimed_from_either_stream(
    redis_settings: Callable[..., Settings], prefix: str, urgent: bool
) -> None:
    """A job held by a consumer without a heartbeat key, in either stream of a lane, is claimed by the next
    reclaim of a live worker, and comes back tagged with the stream it is to be acknowledged on."""
    settings = redis_settings()
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue)
    worker = Worker(client, model, settings, Metrics(), consumer="rescuer")
    worker.ensure_group()
    stream = stream_key(prefix, MODEL, urgent)
    entry_id = client.xadd(stream, {"req": "orphan", "idx": 0, "n": 1}).decode()  # type: ignore[union-attr]
    client.xreadgroup(GROUP, "gone", {stream: ">"}, count=1)  # held by a worker that never beat
    time.sleep(DEAD_CLAIM_IDLE_MS / 1000 + 0.05)
    claimed = worker.reclaim()
    owners = client.xpending(stream, GROUP)["consumers"]
    client.close()
    assert [(s, i) for s, i, _ in claimed] == [(stream, entry_id)]
    assert [(c["name"], c["pending"]) for c in owners] == [(b"rescuer", 1)]


@pytest.mark.parametrize("urgent", [False, True], ids=["jobs", "priority"])
def test_poison_job_is_dead_lettered_after_n_deliveries(
    redis_settings: Callable[..., Settings], prefix: str, urgent: bool
) -> None:
    """A malformed job, in either stream of its lane, is redelivered, then moved to the lane's one
    dead-letter stream (naming its source) and its request told."""
    settings = redis_settings(claim_idle_ms=30, max_deliveries=2)
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue)
    metrics = Metrics()
    worker = Worker(client, model, settings, metrics, consumer="poison-test")
    worker.ensure_group()
    stream, dead = stream_key(prefix, MODEL, urgent), dead_key(prefix, MODEL)
    client.xadd(
        stream,
        {
            "req": "victim",
            "idx": 0,
            "enq": "0",
            "deadline": "1e12",
            "outputs": "restored",
            "data": b"not a packed tile",
        },
    )
    for _ in range(500):
        worker.step(block_ms=20)
        if client.xlen(dead):
            break
    assert client.xlen(dead) == 1
    assert client.xlen(stream) == 0
    entry = client.xrange(dead)[0][1]
    assert int(entry[b"deliveries"]) == 3 and entry[b"source"] == stream.encode()
    header, _ = unpack(client.lpop(result_key(prefix, "victim")))  # type: ignore[arg-type]
    assert "dead-lettered" in header["error"]
    assert metrics.dead_letters._value.get() == 1  # type: ignore[attr-defined]
    assert metrics.redeliveries._value.get() == 1  # type: ignore[attr-defined]
    client.close()


async def test_redis_deadline_and_queue_full(
    redis_settings: Callable[..., Settings], prefix: str, small_png: bytes
) -> None:
    settings = redis_settings(queue_bound=FACE_TILES + FACE_TILES // 2, request_timeout_s=1.0)
    probe = redis.Redis.from_url(settings.queue)
    guide = stream_key(prefix, GUIDE, priority=True)
    async with serve(settings) as client:
        with stalled_worker(settings):  # live but reading nothing: nothing gets computed
            first = asyncio.create_task(client.post("/v1/restore", content=small_png))
            while not first.done() and not probe.xlen(guide):  # pass 1 queued
                await asyncio.sleep(0.01)
            second = await client.post("/v1/restore", content=small_png)
            timed_out = await first
    assert second.status_code == 429 and second.headers["retry-after"]
    assert timed_out.status_code == 504
    # The queue holds pass 1 of the first request: its tiles in jobs of max_batch, counted in tiles.
    assert probe.xlen(guide) == FACE_JOBS
    assert int(probe.get(tiles_key(prefix, GUIDE, priority=True))) == FACE_TILES  # type: ignore[arg-type]
    assert f"holds {FACE_TILES} tiles" in second.json()["message"]
    # A worker arriving late drops the expired jobs without computing them.
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    metrics = Metrics()
    worker = Worker(probe, model, settings, metrics, consumer="late")
    for _ in range(100):
        if not probe.xlen(guide):
            break
        worker.step(block_ms=10)
    assert probe.xlen(guide) == probe.xlen(stream_key(prefix, MODEL, priority=True)) == 0
    assert int(probe.get(tiles_key(prefix, GUIDE, priority=True))) == 0  # type: ignore[arg-type]
    for lane in (MODEL, GUIDE):
        assert metrics.batch_size.labels(lane)._sum.get() == 0  # type: ignore[attr-defined]
    probe.close()


async def test_redis_outage_is_503_then_recovers_without_restart(
    make_settings: Callable[..., Settings], prefix: str, small_png: bytes
) -> None:
    port = free_port()
    server = start_redis_server(port)
    settings = make_settings(queue=f"redis://127.0.0.1:{port}/0", stream_prefix=prefix, request_timeout_s=20)
    try:
        async with serve(settings) as client:
            with worker_thread(settings):
                before = await client.post("/v1/restore", content=small_png)
                server.kill()
                server.wait()
                down = await client.post("/v1/restore", content=small_png)
                not_ready = await client.get("/readyz")
                server = start_redis_server(port)  # returns once it answers PING
                answering = time.monotonic()
                after = None
                for _ in range(100):
                    after = await client.post("/v1/restore", content=small_png)
                    if after.status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                served_s = time.monotonic() - answering
                ready = await client.get("/readyz")
    finally:
        server.kill()
        server.wait()
    assert before.status_code == 200
    assert down.status_code == 503 and down.headers["retry-after"]
    assert "unreachable" in down.json()["message"]
    assert not_ready.status_code == 503
    assert after is not None and after.status_code == 200, after.text if after else None
    assert served_s <= 3.0  # the worker retries at most 1 s apart
    assert ready.status_code == 200, ready.text


async def test_cancelled_request_jobs_are_dropped_unrun(
    redis_settings: Callable[..., Settings], prefix: str, small_png: bytes
) -> None:
    """A request cancelled while its jobs wait (its client went away) sets its cancel key; a worker then
    acknowledges and deletes those jobs without computing them and without answering."""
    settings = redis_settings()
    probe = redis.Redis.from_url(settings.queue)
    guide = stream_key(prefix, GUIDE, priority=True)
    async with serve(settings) as client:
        with stalled_worker(settings):  # no worker reads yet: the jobs wait
            request = asyncio.create_task(client.post("/v1/restore", content=small_png))
            while not probe.xlen(guide):
                await asyncio.sleep(0.01)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            for _ in range(500):  # the cancelled request's clean-up runs on in the background
                if list(probe.scan_iter(f"{prefix}:cancel:*")):
                    break
                await asyncio.sleep(0.01)
    assert len(list(probe.scan_iter(f"{prefix}:cancel:*"))) == 1
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    metrics = Metrics()
    worker = Worker(probe, model, settings, metrics, consumer="after-cancel")
    for _ in range(100):
        if not probe.xlen(guide):
            break
        worker.step(block_ms=10)
    worker.flush()
    assert probe.xlen(guide) == 0
    assert int(probe.get(tiles_key(prefix, GUIDE, priority=True))) == 0  # type: ignore[arg-type]
    assert metrics.batch_size.labels(GUIDE)._sum.get() == 0  # type: ignore[attr-defined]
    assert not list(probe.scan_iter(f"{prefix}:res:*"))
    probe.close()


def test_worker_splits_jobs_into_model_calls_of_at_most_max_batch(
    redis_settings: Callable[..., Settings], prefix: str, dataset: Callable[[str], Path]
) -> None:
    """Jobs of 3 tiles with a max batch of 4: the worker reads a second job to fill its batch (6 tiles), runs
    4 + 2, and every job gets its own tiles' outputs back."""
    settings = redis_settings(max_batch=4)
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue)
    metrics = Metrics()
    worker = Worker(client, model, settings, metrics, consumer="split-test")
    worker.ensure_group()
    pixels = np.asarray(Image.open(dataset("cset14") / "face.png").convert("RGB"))
    grid = plan_tiles(*pixels.shape[:2], tile=64, overlap=16, multiple=4)
    assert model.guide is not None
    tiles = extract_tiles(pixels, grid)[:9]
    channels = int(model.guide.outputs[0].shape[1])
    mean = np.random.default_rng(0).standard_normal((9, channels), dtype=np.float32)
    name = model.guide.mean_input
    now = time.time()
    for start in (0, 3, 6):
        inputs = {"image": tiles[start : start + 3], name: mean[start : start + 3]}
        client.xadd(stream_key(prefix, MODEL), job_fields("split", start, inputs, ["r_plus"], now, now + 60))
    for _ in range(200):
        if not client.xlen(stream_key(prefix, MODEL)):
            break
        worker.step(block_ms=20)
    worker.flush()
    messages: Any = client.lrange(result_key(prefix, "split"), 0, -1)
    client.close()
    expected = model.run({"image": tiles, name: mean}, ["r_plus"])["r_plus"]
    assert sorted(unpack(m)[0]["idx"] for m in messages) == [0, 3, 6]
    for message in messages:
        header, arrays = unpack(message)
        assert header["n"] == 3
        np.testing.assert_allclose(arrays["r_plus"], expected[header["idx"] : header["idx"] + 3], atol=1e-4)
    histogram = metrics.batch_size.labels(MODEL)
    assert histogram._sum.get() == 9  # type: ignore[attr-defined]
    samples = metrics.batch_size.collect()[0].samples
    buckets = {
        s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket") and s.labels["model"] == MODEL
    }
    assert buckets["4.0"] == buckets["+Inf"] >= 3  # no call over max_batch; at least 4 + 2 + 3


def test_worker_fills_a_partial_batch_by_polling_not_by_a_blocking_timeout(
    redis_settings: Callable[..., Settings], prefix: str
) -> None:
    """A partial batch waits DIR_MAX_QUEUE_DELAY_MS here, reading without BLOCK: a blocked XREADGROUP times
    out only at Redis' next `hz` tick (100 ms by default), which added up to 100 ms to each one-tile pass."""
    settings = redis_settings(max_batch=4, max_queue_delay_ms=20)
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue)
    worker = Worker(client, model, settings, Metrics(), consumer="poll-test")
    worker.ensure_group()
    blocks: list[int | None] = []
    read = worker._read

    def recording(block_ms: int | None) -> list[Any]:
        blocks.append(block_ms)
        return read(block_ms)

    worker._read = recording  # type: ignore[method-assign]
    now = time.time()
    tile = np.zeros((1, 3, 64, 64), dtype=np.uint8)
    inputs = {"image": tile, WINDOW_INPUT: np.array([[0, 16, 0, 16]], dtype=np.uint16)}
    client.xadd(stream_key(prefix, GUIDE), job_fields("poll", 0, inputs, [GUIDE_SUM], now, now + 60))
    entries = worker.read_batch(block_ms=1000)
    client.close()
    assert len(entries) == 1
    assert blocks[0] == int(worker.reclaim_interval_s * 1000)  # blocks, at most until the next reclaim
    assert len(blocks) > 1 and set(blocks[1:]) == {None}
    assert time.time() - now >= 0.02


async def overtaken_batches(redis_settings: Callable[..., Settings], priority_tiles: int) -> list[list[int]]:
    """A 40-tile request's jobs queued, then a 1-tile request's (denoise graph, 2-tile jobs), before a worker
    steps through them: the request tag (1 costly, 2 small) of every tile of each model call, in order."""
    settings = redis_settings(max_batch=2, max_queue_delay_ms=0, priority_tiles=priority_tiles)
    model = RestoreModel.load(resolve_entry(settings.model_store, settings.restore_model, "restore"), None, 1)
    client = redis.Redis.from_url(settings.queue)
    worker = Worker(client, model, settings, Metrics(), consumer="overtake")
    calls: list[list[int]] = []
    run = model.run

    def recording(inputs: dict[str, np.ndarray], outputs: list[str], graph: str) -> dict[str, np.ndarray]:
        calls.append([int(tile.flat[0]) for tile in inputs[model.input_name]])
        return run(inputs, outputs, graph)

    model.run = recording  # type: ignore[method-assign]
    policy = BatchPolicy(settings.max_batch, 0.0, settings.queue_bound)
    queue = RedisQueue(
        settings.queue, MODEL, policy, settings.stream_prefix, 0.1, model.graphs, settings.priority_tiles
    )

    def tiles(tag: int, count: int) -> dict[str, np.ndarray]:
        return {model.input_name: np.full((count, 3, 64, 64), tag, dtype=np.uint8)}

    with stalled_worker(settings):
        await queue.start()
        costly = asyncio.create_task(queue.submit(tiles(1, 40), ["restored"], 60, DENOISE_GRAPH))
        while await queue.depth(DENOISE_GRAPH) < 40:
            await asyncio.sleep(0.01)
        small = asyncio.create_task(queue.submit(tiles(2, 1), ["restored"], 60, DENOISE_GRAPH))
        while await queue.depth(DENOISE_GRAPH) < 41:
            await asyncio.sleep(0.01)
        for _ in range(100):
            if not await queue.depth(DENOISE_GRAPH):
                break
            await asyncio.to_thread(worker.step, 10)
        await asyncio.to_thread(worker.flush)
        results = await asyncio.gather(costly, small)
        await queue.close()
    client.close()
    assert [len(r.outputs["restored"]) for r in results] == [40, 1]
    return calls


async def test_small_request_overtakes_a_costly_backlog(redis_settings: Callable[..., Settings]) -> None:
    """A 1-tile request queued behind a 40-tile request's 20 jobs goes to the priority stream, which workers
    read first: it runs in the first model call. With DIR_PRIORITY_TILES=0 (one stream per graph, read in
    order: the old behaviour) it runs only after the whole backlog."""
    prioritised = await overtaken_batches(redis_settings, priority_tiles=16)
    in_order = await overtaken_batches(redis_settings, priority_tiles=0)
    assert prioritised[0] == [2]
    assert sorted(tag for call in prioritised for tag in call) == [1] * 40 + [2]
    assert in_order[-1] == [2] and all(call == [1, 1] for call in in_order[:-1])


async def test_small_requests_keep_their_latency_next_to_a_costly_one(
    redis_settings: Callable[..., Settings], prefix: str
) -> None:
    """Redis mode, one worker: a 1600 x 1600 request (hundreds of tiles per pass, normal streams) and small
    1-tile requests (priority streams) sent one after another while it computes: their median latency stays
    within 2x the usual (alone) median plus 50 ms of slack for a loaded machine, the slowest within 2x plus
    250 ms. Read in order (DIR_PRIORITY_TILES=0) the first one waited for the backlog: about 0.9 s here."""
    small, costly_body = noise_png(100, 100), noise_png(1600, 1600, 1)
    settings = redis_settings(max_batch=2)
    probe = redis.Redis.from_url(settings.queue)
    backlog = [stream_key(prefix, lane) for lane in (MODEL, GUIDE)]
    async with serve(settings) as client:
        with worker_thread(settings):
            assert (await client.post("/v1/restore", content=small)).status_code == 200
            usual = await restore_latencies(client, small)
            costly = asyncio.create_task(client.post("/v1/restore", content=costly_body))
            while sum(probe.xlen(stream) for stream in backlog) < 20 and not costly.done():
                await asyncio.sleep(0.01)
            beside = await restore_latencies(client, small)
            still_queued = sum(probe.xlen(stream) for stream in backlog)
            assert (await costly).status_code == 200
    probe.close()
    assert statistics.median(beside) <= 2 * statistics.median(usual) + 0.05, (usual, beside)
    assert max(beside) <= 2 * statistics.median(usual) + 0.25, (usual, beside)
    assert still_queued > 0, "the costly request finished before the small ones: nothing was shown"


def live_gauge(text: str) -> float:
    """The value of ``dir_live_workers{model="dir-restore/0.0.1"}`` in a /metrics exposition."""
    line = next(line for line in text.splitlines() if line.startswith(f'dir_live_workers{{model="{MODEL}"}}'))
    return float(line.split()[-1])


async def test_live_worker_gauge(redis_settings: Callable[..., Settings]) -> None:
    """``dir_live_workers`` on the API's /metrics counts the workers whose heartbeat is live: 0, 1, 2, then 0
    once they stopped; serving /readyz refreshes it too."""
    settings = redis_settings()
    async with serve(settings) as client:
        gauge = client.app.state.metrics.live_workers.labels(MODEL)  # type: ignore[attr-defined]
        none = live_gauge((await client.get("/metrics")).text)
        with worker_thread(settings, consumer="one"):
            one = live_gauge((await client.get("/metrics")).text)
            with worker_thread(settings, consumer="two"):
                await client.get("/readyz")
                after_readyz = gauge._value.get()
                two = live_gauge((await client.get("/metrics")).text)
        stopped = live_gauge((await client.get("/metrics")).text)
    assert (none, one, after_readyz, two, stopped) == (0, 1, 2, 2, 0)


async def test_request_without_a_live_worker_is_refused_at_once(
    redis_settings: Callable[..., Settings], prefix: str, small_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker: 503 `unavailable` with Retry-After naming the missing worker, at once (not at the 60 s
    deadline), nothing queued; ten requests at once read the live count from Redis once. With a worker
    started, requests are served again within about LIVE_CHECK_S (the count's cache)."""
    reads = 0

    async def counting(*args: Any) -> list[str]:
        nonlocal reads
        reads += 1
        return await live_workers(*args)

    monkeypatch.setattr(service.redis_queue, "live_workers", counting)
    settings = redis_settings()
    probe = redis.Redis.from_url(settings.queue)
    async with serve(settings) as client:
        started = time.perf_counter()
        refused = await asyncio.gather(*[client.post("/v1/restore", content=small_png) for _ in range(10)])
        elapsed = time.perf_counter() - started
        cached_reads = reads
        not_ready = await client.get("/readyz")
        with worker_thread(settings):
            began = time.perf_counter()
            served = await client.post("/v1/restore", content=small_png)
            while served.status_code == 503 and time.perf_counter() - began < 3:
                await asyncio.sleep(0.1)
                served = await client.post("/v1/restore", content=small_png)
            recovered_s = time.perf_counter() - began
    queued = [probe.xlen(stream_key(prefix, lane, urgent)) for lane in (MODEL, GUIDE) for urgent in (0, 1)]
    probe.close()
    assert [r.status_code for r in refused] == [503] * 10
    body = refused[0].json()
    assert body["error"] == "unavailable" and refused[0].headers["retry-after"] == "1"
    assert f"no live dir-worker serves {MODEL}" in body["message"] and "dir-worker" in body["message"]
    assert elapsed < 2.0
    assert cached_reads == 1
    assert queued == [0, 0, 0, 0]
    assert not_ready.status_code == 503 and "no live dir-worker" in not_ready.json()["checks"]["queue"]
    assert served.status_code == 200, served.text
    assert recovered_s <= LIVE_CHECK_S + 1.0
