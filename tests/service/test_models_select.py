"""Several restoration entries served at once (``DIR_SERVE_MODELS``), picked per request with ``?model=``:
restore, represent, detect and jobs; ``/v1/models`` lists them; a task-aligned entry detects with the
detector it was aligned for (or says that the service's ran instead)."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelstore.errors import ModelStoreError
from modelstore.manifest import ModelFile, read_manifest, sha256_file, write_manifest
from service.api.state import build_state
from service.client import AsyncDirClient
from service.metrics import Metrics
from service.settings import Settings
from tests.detect.conftest import constant_detector_onnx
from tests.service.conftest import noise_png, serve
from tests.service.fixture_model import build_entry

ALIGNED = "dir-align-toy/1"
MISSING = "dir-align-gone/1"


def _install_detector(store: Path, tmp: Path, name: str, cat: float) -> None:
    """A constant ONNX detector ``name/1`` (input 64 px) that finds one box: a cat when ``cat`` > 0.5,
    else a dog; installed the way ``dir-models add-detector onnx`` does."""
    from training.detect.cli import main

    names = tmp / "two.names"
    names.write_text("cat\ndog\n")
    out = np.array([[[32.0, 32.0, 32.0, 16.0, 0.9, cat, 1.0 - cat]]], np.float32)
    onnx_path = constant_detector_onnx(tmp / f"{name}.onnx", out, 64)
    argv = ["add-detector", "onnx", str(onnx_path), "--layout", "yolov5", "--names", str(names)]
    assert main([*argv, "--name", name, "--input-size", "64", "--store", str(store)]) == 0


def _aligned_entry(store: Path, ref: str, detector_entry: str, denoise: bool) -> None:
    """A restoration entry ``ref`` whose main graph's weights are halved (so its outputs differ from the
    fixture entry's), with or without the denoise graph, recorded as aligned for ``detector_entry``."""
    name, version = ref.split("/")
    entry = build_entry(store, name, version, denoise=denoise)
    graph = onnx.load(entry / "model.onnx")
    for init in graph.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim == 4:
            init.CopyFrom(numpy_helper.from_array(array * 0.5, init.name))
    onnx.save(graph, entry / "model.onnx")
    manifest = read_manifest(entry)
    manifest.files = [
        ModelFile(path=f.path, sha256=sha256_file(entry / f.path), role=f.role) for f in manifest.files
    ]
    manifest.extra["aligned_for"] = {
        "task": "detect",
        "detector": detector_entry,
        "detector_mode": "frozen",
        "loss": "distill",
        "detector_entry": detector_entry,
        "local_only": False,
        "commit": True,
    }
    write_manifest(entry, manifest)


@pytest.fixture(scope="module")
def store(fixture_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture store, a service detector ``toy-detector`` (dog), ``toy-aligned`` (cat), an entry aligned
    for ``toy-aligned`` and one (without the denoise graph) aligned for a detector that is not installed."""
    root = tmp_path_factory.mktemp("models_select")
    store = root / "store"
    shutil.copytree(fixture_store, store)
    _install_detector(store, root, "toy-detector", 0.1)
    _install_detector(store, root, "toy-aligned", 0.9)
    _aligned_entry(store, ALIGNED, "toy-aligned@1", denoise=True)
    _aligned_entry(store, MISSING, "gone@1", denoise=False)
    return store


@pytest.fixture
def settings(make_settings: Callable[..., Settings], store: Path) -> Settings:
    """Default ``dir-restore/0.0.1`` (its default mode: denoise), the two aligned entries served beside it
    (theirs: full, whatever DIR_RESTORE_MODE says)."""
    return make_settings(
        model_store=store,
        detect_model="toy-detector",
        serve_models=f"dir-align-toy,{MISSING}",
        restore_mode="denoise",
    )


async def _job(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    """Submit ``body`` to ``path`` as a job, wait until it ends, return its result."""
    submitted = await client.post(path, content=body)
    assert submitted.status_code == 202, submitted.text
    for _ in range(600):
        status = (await client.get(submitted.headers["Location"])).json()
        if status["state"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert status["state"] == "done", status
    return await client.get(status["result"])


async def test_model_query_picks_the_served_entry(settings: Settings) -> None:
    body = noise_png(96, 128)
    async with serve(settings) as client:
        default = await client.post("/v1/represent", content=body)
        aligned = await client.post("/v1/represent?model=dir-align-toy", content=body)
        versioned = await client.post(f"/v1/represent?model={ALIGNED}", content=body)
        restored = await client.post(f"/v1/restore?model={ALIGNED}", content=body)
        job = await _job(client, f"/v1/jobs/represent?model={ALIGNED}", body)
        no_denoise = await client.post(f"/v1/restore?model={MISSING}&mode=denoise", content=body)
        denoised = await client.post(f"/v1/restore?model={ALIGNED}&mode=denoise", content=body)
        default_restored = await client.post("/v1/restore", content=body)
    assert default.status_code == aligned.status_code == 200, aligned.text
    assert default.headers["X-Model"] == "dir-restore/0.0.1"
    assert aligned.headers["X-Model"] == versioned.headers["X-Model"] == ALIGNED
    assert restored.status_code == 200 and restored.headers["X-Model"] == ALIGNED
    assert restored.headers["X-Restore-Mode"] == "full"
    assert default_restored.headers["X-Restore-Mode"] == "denoise"
    r_default, r_aligned = (np.load(io.BytesIO(r.content)) for r in (default, aligned))
    assert r_default.shape == r_aligned.shape and not np.allclose(r_default, r_aligned)
    assert aligned.content == versioned.content
    assert job.status_code == 200 and job.headers["X-Model"] == ALIGNED and job.content == aligned.content
    assert no_denoise.status_code == 422 and "denoise" in no_denoise.json()["message"]
    assert denoised.status_code == 200 and denoised.headers["X-Restore-Mode"] == "denoise"


async def test_unknown_model_is_404_naming_the_served_ones(settings: Settings) -> None:
    async with serve(settings) as client:
        sync = await client.post("/v1/restore?model=nope/9", content=noise_png(32, 32))
        job = await client.post("/v1/jobs/detect?model=nope", content=noise_png(32, 32))
    assert sync.status_code == job.status_code == 404
    body = sync.json()
    assert body["error"] == "model_not_found"
    for named in ("nope/9", "dir-restore/0.0.1", ALIGNED, MISSING):
        assert named in body["message"]


async def test_models_lists_every_served_entry(settings: Settings) -> None:
    async with serve(settings) as client:
        listing = (await client.get("/v1/models")).json()
    served = {s["model"]: s for s in listing["served"]}
    assert list(served) == ["dir-restore/0.0.1", ALIGNED, MISSING]
    assert served["dir-restore/0.0.1"]["default"] and not served[ALIGNED]["default"]
    assert served["dir-restore/0.0.1"]["aligned_for"] is None
    assert served[ALIGNED]["aligned_for"]["detector_entry"] == "toy-aligned@1"
    assert served[ALIGNED]["detector"] == "toy-aligned/1" and served[MISSING]["detector"] == "toy-detector/1"
    assert served[ALIGNED]["modes"] == ["full", "denoise"] and served[ALIGNED]["default_mode"] == "full"
    assert served[MISSING]["modes"] == ["full"]
    assert served["dir-restore/0.0.1"]["default_mode"] == "denoise"
    loaded = {f"{m['name']}/{m['version']}" for m in listing["models"] if m["loaded"]}
    assert loaded == {"dir-restore/0.0.1", ALIGNED, MISSING, "toy-detector/1"}


async def test_detect_with_an_aligned_entry_uses_its_detector(settings: Settings) -> None:
    body = noise_png(64, 64)
    async with serve(settings) as client:
        default = await client.post("/v1/detect", content=body)
        aligned = await client.post(f"/v1/detect?model={ALIGNED}", content=body)
        fallback = await client.post(f"/v1/detect?model={MISSING}", content=body)
        job = await _job(client, f"/v1/jobs/detect?model={ALIGNED}", body)
    assert default.status_code == aligned.status_code == fallback.status_code == 200, aligned.text
    plain, tuned, missing = default.json(), aligned.json(), fallback.json()
    assert plain["detector"] == "toy-detector/1" and plain["aligned_detector"] is None
    assert plain["restore_mode"] == "denoise" and plain["model"] == "dir-restore/0.0.1"
    assert [d["class_name"] for d in plain["detections"]] == ["dog"]
    assert tuned["model"] == ALIGNED and tuned["detector"] == "toy-aligned/1"
    assert tuned["restore_mode"] == "full" and aligned.headers["X-Detector"] == "toy-aligned/1"
    assert [d["class_name"] for d in tuned["detections"]] == ["cat"]
    assert missing["detector"] == "toy-detector/1" and missing["aligned_detector"] == "gone/1"
    assert fallback.headers["X-Model"] == MISSING
    assert job.status_code == 200 and job.json()["detector"] == "toy-aligned/1"


async def test_extra_models_need_the_embedded_queue(
    make_settings: Callable[..., Settings], store: Path
) -> None:
    settings = make_settings(model_store=store, queue="redis://127.0.0.1:1", serve_models="dir-align-toy")
    with pytest.raises(ModelStoreError, match="embedded queue only"):
        await build_state(settings, Metrics())


async def test_model_query_with_redis_says_extra_models_need_the_embedded_queue(
    make_settings: Callable[..., Settings], redis_url: str, prefix: str
) -> None:
    async with serve(make_settings(queue=redis_url, stream_prefix=prefix)) as client:
        response = await client.post(f"/v1/represent?model={ALIGNED}", content=noise_png(32, 32))
        default = await client.post("/v1/represent?model=dir-restore/0.0.1", content=b"")
    assert response.status_code == 404
    assert "DIR_QUEUE=embedded" in response.json()["message"]
    assert default.status_code != 404


async def test_client_model_keyword(settings: Settings) -> None:
    body = noise_png(64, 64)
    async with serve(settings) as served:
        transport = httpx.ASGITransport(app=served.app)  # type: ignore[attr-defined]
        async with AsyncDirClient("http://service", transport=transport) as client:
            detected = await client.detect(body, model=ALIGNED)
            as_job = await client.represent(body, model=ALIGNED, job_above=0)
            default = await client.restore(body)
    assert detected.model == ALIGNED and detected.detector == "toy-aligned/1"
    assert as_job.model == ALIGNED and default.model == "dir-restore/0.0.1"
