"""Issue 22, part C: no secrets in responses or logs, the one error shape for every status, gated ops
endpoints, body limits while streaming, pinned model digests, detectors picked up without a restart."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from modelstore.detector import load_detector
from modelstore.errors import ModelStoreError
from modelstore.manifest import ModelFile, read_manifest, sha256_file, write_manifest
from modelstore.store import resolve_entry
from service.api.app import create_app
from service.redact import Redactor, install_log_redaction, redact_url
from service.settings import Settings
from service.store import RestoreModel
from tests.detect.conftest import constant_detector_onnx
from tests.service.conftest import free_port, restore_scope, serve

PASSWORD = "s3cret-Pa55word"
KEY = {"Authorization": "Bearer k1"}


def small_png(side: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def copy_store(fixture_store: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(fixture_store, store)
    return store


# --- secrets ---------------------------------------------------------------------------------------------


def test_redact_url_masks_credentials() -> None:
    assert redact_url(f"redis://user:{PASSWORD}@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redact_url(f"rediss://:{PASSWORD}@h/1") == "rediss://***@h/1"
    assert redact_url(f"unix:///run/redis.sock?db=0&password={PASSWORD}") == (
        "unix:///run/redis.sock?db=0&password=***"
    )
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    redact = Redactor.for_urls(f"redis://user:{PASSWORD}@h:6379/0")
    assert redact(f"AUTH failed for {PASSWORD} at h:6379") == "AUTH failed for *** at h:6379"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("dir.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    url = f"redis://user:{PASSWORD}@127.0.0.1:1/0"
    remove = install_log_redaction(Redactor.for_urls(url))
    try:
        logger.warning("queue %s is down", url)
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            logger.exception("request failed")
    finally:
        remove()
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "queue redis://***@127.0.0.1:1/0 is down" in text
    assert "ConnectionError: cannot reach redis://***@127.0.0.1:1/0" in text


async def test_password_absent_from_every_response_and_log_while_redis_is_down(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """``DIR_QUEUE`` with a password, pointing at a loopback port with nothing listening."""
    caplog.set_level(logging.DEBUG)
    queue = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    responses: list[httpx.Response] = []
    async with serve(make_settings(queue=queue, api_keys="k1")) as client:
        for method, path, kwargs in [
            ("GET", "/healthz", {}),
            ("GET", "/readyz", {}),
            ("GET", "/readyz", {"headers": KEY}),
            ("POST", "/v1/restore", {"headers": KEY, "content": small_png()}),
            ("POST", "/v1/represent", {"headers": KEY, "content": small_png()}),
            ("POST", "/v1/restore", {"content": small_png()}),
            ("GET", "/v1/models", {"headers": KEY}),
            ("GET", "/metrics", {"headers": KEY}),
            ("GET", "/no/such/path", {}),
        ]:
            responses.append(await client.request(method, path, **kwargs))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 503, 503, 503, 503, 401, 200, 200, 404]
    for response in responses:
        assert PASSWORD not in response.text
        assert all(PASSWORD not in value for value in response.headers.values())
    detail = responses[2].json()["checks"]["queue"]
    assert "redis://***@127.0.0.1" in detail and "unreachable" in detail
    assert "redis://***@127.0.0.1" in responses[3].json()["message"]
    assert responses[3].headers["retry-after"]
    assert PASSWORD not in caplog.text


async def test_readyz_detail_and_metrics_need_the_key(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(api_keys="k1")) as client:
        bare = await client.get("/readyz")
        keyed = await client.get("/readyz", headers=KEY)
        metrics = await client.get("/metrics")
        metrics_keyed = await client.get("/metrics", headers=KEY)
        health = await client.get("/healthz")
    assert bare.status_code == keyed.status_code == 200
    assert bare.json()["ready"] is True and set(bare.json()["checks"]) == {"detail"}
    assert keyed.json()["checks"]["model"] == "dir-restore/0.0.1"
    assert metrics.status_code == 401 and metrics.headers["www-authenticate"] == 'Bearer realm="dir-isp"'
    assert metrics_keyed.status_code == 200 and "dir_rejected_total" in metrics_keyed.text
    assert health.status_code == 200
    async with serve(make_settings(api_keys="k1", ops_open=True)) as client:
        open_ready = await client.get("/readyz")
        open_metrics = await client.get("/metrics")
        models = await client.get("/v1/models")
    assert open_ready.json()["checks"]["model"] == "dir-restore/0.0.1"
    assert open_metrics.status_code == 200
    assert models.status_code == 401


# --- one error shape -------------------------------------------------------------------------------------


async def test_routing_errors_and_crashes_use_the_error_shape(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())

    async def boom() -> None:
        raise RuntimeError("internal detail that must not leak")

    app.add_api_route("/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            missing = await client.get("/v1/nothing")
            wrong_method = await client.delete("/v1/restore")
            get_restore = await client.get("/v1/restore")
            crash = await client.get("/boom")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "GET /v1/nothing: Not Found"}
    assert wrong_method.status_code == get_restore.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST" and "(allowed: POST)" in wrong_method.json()["message"]
    assert crash.status_code == 500
    assert crash.json() == {"error": "internal", "message": "internal server error; see the server log"}


# --- the body: size while streaming, arrival time, client gone ------------------------------------------


async def test_oversized_chunked_body_is_refused_before_it_is_all_read(
    make_settings: Callable[..., Settings],
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"\0" * 1024

    async with serve(make_settings(max_body_bytes=10 * 1024)) as client:
        response = await client.post("/v1/restore", content=chunks())
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert sent <= 12, f"{sent} chunks of 1 KiB were read for a 10 KiB limit"


async def test_stalled_body_is_408(make_settings: Callable[..., Settings]) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b"\x89PNG"
        await asyncio.sleep(30)
        yield b"never"

    async with serve(make_settings(body_timeout_s=0.3)) as client:
        response = await asyncio.wait_for(client.post("/v1/restore", content=stalls()), timeout=10)
    assert response.status_code == 408
    assert response.json()["error"] == "request_timeout"
    assert "DIR_BODY_TIMEOUT_S" in response.json()["message"]


async def test_aborted_upload_is_one_log_line(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The client disconnects mid-body: one INFO line, no traceback, no exception out of the app."""
    caplog.set_level(logging.INFO)
    app = create_app(make_settings())
    messages = iter(
        [
            {"type": "http.request", "body": b"\x89PNG" + b"\0" * 1000, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = restore_scope([(b"content-type", b"image/png")])
    async with app.router.lifespan_context(app):
        caplog.clear()
        await app(scope, receive, send)
    assert sent[0]["status"] == 499
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "after 1004 bytes" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# --- pinned digests --------------------------------------------------------------------------------------


def _swap_model(entry_dir: Path) -> None:
    """What an attacker with write access does: change model.onnx and rewrite the manifest's sha256."""
    onnx = entry_dir / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    manifest = read_manifest(entry_dir)
    files = [
        ModelFile(path=f.path, sha256=sha256_file(onnx), role=f.role) if f.path == "model.onnx" else f
        for f in manifest.files
    ]
    write_manifest(entry_dir, manifest.model_copy(update={"files": files}))


def test_pinned_digest_refuses_a_manifest_rewritten_in_place(fixture_store: Path, tmp_path: Path) -> None:
    store = copy_store(fixture_store, tmp_path)
    entry = resolve_entry(store, "dir-restore", "restore")
    pin = sha256_file(entry.path / "manifest.json")
    settings = Settings(model_store=store, pinned_digests=f"dir-restore/0.0.1={pin.upper()}")
    assert settings.pins == {"dir-restore/0.0.1": pin}
    RestoreModel.from_settings(entry, settings, with_session=False)
    _swap_model(entry.path)
    swapped = resolve_entry(store, "dir-restore", "restore")
    RestoreModel.load(swapped, None, 1, with_session=False)  # the sha256 check alone lets it through
    with pytest.raises(ModelStoreError, match="differs from the digest DIR_PINNED_DIGESTS pins"):
        RestoreModel.from_settings(swapped, settings, with_session=False)
    other = Settings(model_store=store, pinned_digests=f"other/1={pin}")
    with pytest.raises(ModelStoreError, match=r"dir-restore/0\.0\.1 .* is not pinned"):
        RestoreModel.from_settings(swapped, other, with_session=False)


async def test_service_refuses_to_start_on_a_pin_mismatch(
    make_settings: Callable[..., Settings], fixture_store: Path, tmp_path: Path
) -> None:
    store = copy_store(fixture_store, tmp_path)
    _swap_model(store / "dir-restore" / "0.0.1")
    settings = make_settings(model_store=store, pinned_digests=f"dir-restore/0.0.1={'0' * 64}")
    with pytest.raises(ModelStoreError, match="DIR_PINNED_DIGESTS"):
        async with serve(settings):
            pass


def test_pin_setting_is_validated() -> None:
    with pytest.raises(ValidationError, match="name/version=<sha256 hex>"):
        Settings(pinned_digests="dir-restore=abc")


# --- detectors installed while the server runs -----------------------------------------------------------


def install_detector(store: Path, tmp_path: Path) -> Path:
    """A tiny constant ONNX detector (one 'dog' box) as ``toy-detector/1``, the way ``dir-models`` does."""
    from training.detect.cli import main

    names = tmp_path / "two.names"
    names.write_text("cat\ndog\n")
    out = np.array([[[32.0, 32.0, 32.0, 16.0, 0.9, 0.1, 0.9]]], np.float32)
    onnx_path = constant_detector_onnx(tmp_path / "toy-detector.onnx", out, 64)
    argv = ["add-detector", "onnx", str(onnx_path), "--layout", "yolov5", "--names", str(names)]
    assert main([*argv, "--input-size", "64", "--store", str(store)]) == 0
    return store / "toy-detector" / "1"


async def test_detector_installed_while_serving_is_picked_up(
    make_settings: Callable[..., Settings], fixture_store: Path, tmp_path: Path
) -> None:
    store = copy_store(fixture_store, tmp_path)
    settings = make_settings(model_store=store, detect_model="", detector_rescan_s=3600)
    async with serve(settings) as client:
        before = await client.post("/v1/detect", content=small_png(64))
        install_detector(store, tmp_path)
        rate_limited = await client.post("/v1/detect", content=small_png(64))
        client.app.state.service.detector_scanned -= 3600  # type: ignore[attr-defined]
        after = await client.post("/v1/detect", content=small_png(64))
        models = await client.get("/v1/models")
    assert before.status_code == rate_limited.status_code == 503
    assert "no detector installed" in rate_limited.json()["message"]
    assert after.status_code == 200, after.text
    assert after.json()["detector"] == "toy-detector/1"
    assert [d["class_name"] for d in after.json()["detections"]] == ["dog"]
    assert models.json()["detect"] == "toy-detector/1"


def test_detector_pins(tmp_path: Path) -> None:
    entry_dir = install_detector(tmp_path / "store", tmp_path)
    digest = sha256_file(entry_dir / "manifest.json")
    assert load_detector(entry_dir, pins={"toy-detector/1": digest}).name == "toy-detector"
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    manifest["extra"]["class_names"] = ["dog", "cat"]
    (entry_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="changed after it was pinned"):
        load_detector(entry_dir, pins={"toy-detector/1": digest})


async def test_redis_queue_errors_carry_no_password() -> None:
    from service.batching import BatchPolicy
    from service.errors import Unavailable
    from service.redis_queue import RedisQueue

    queue = RedisQueue(
        f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0", "m/1", BatchPolicy(8, 0.0, 64), "dirtest-redact"
    )
    try:
        with pytest.raises(Unavailable) as caught:
            await queue.ping()
    finally:
        await queue.close()
    assert PASSWORD not in caught.value.message
    assert "redis://***@127.0.0.1" in caught.value.message
