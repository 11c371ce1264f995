"""Every error path answers its status code with a message (never a 500 for bad input)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from service.settings import Settings
from tests.service.conftest import header_png, image_bytes, serve


@pytest.fixture
def lenna(dataset: Callable[[str], Path]) -> Path:
    return dataset("cset14") / "lenna.png"


async def test_not_an_image_is_415(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings()) as client:
        text = await client.post("/v1/restore", content=b"hello, this is text")
        empty = await client.post("/v1/restore", content=b"")
    assert text.status_code == 415
    assert "not a PNG, JPEG or WebP" in text.json()["message"]
    assert empty.status_code == 422


async def test_unsupported_format_is_415(make_settings: Callable[..., Settings], lenna: Path) -> None:
    async with serve(make_settings()) as client:
        gif = await client.post("/v1/restore", content=image_bytes(lenna, "GIF"))
        bmp = await client.post("/v1/represent", content=image_bytes(lenna, "BMP"))
    assert gif.status_code == bmp.status_code == 415
    assert "GIF" in gif.json()["message"]


async def test_truncated_image_is_422(
    make_settings: Callable[..., Settings], dataset: Callable[[str], Path]
) -> None:
    jpeg = (dataset("yolo_fastestv2") / "img" / "000139.jpg").read_bytes()
    png = (dataset("cset14") / "face.png").read_bytes()
    async with serve(make_settings()) as client:
        cut_jpeg = await client.post("/v1/restore", content=jpeg[: len(jpeg) // 2])
        cut_png = await client.post("/v1/restore", content=png[: len(png) // 2])
    assert cut_jpeg.status_code == cut_png.status_code == 422
    assert "truncated" in cut_jpeg.json()["message"]


async def test_body_over_limit_is_413(make_settings: Callable[..., Settings], lenna: Path) -> None:
    data = lenna.read_bytes()

    async def chunked() -> object:
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    async with serve(make_settings(max_body_bytes=10_000)) as client:
        declared = await client.post("/v1/restore", content=data)
        streamed = await client.post("/v1/restore", content=chunked())  # type: ignore[arg-type]
        multipart = await client.post("/v1/represent", files={"file": ("x.png", data, "image/png")})
    assert declared.status_code == streamed.status_code == multipart.status_code == 413
    assert "10000" in declared.json()["message"]


async def test_pixels_over_limit_is_413_before_decoding(
    make_settings: Callable[..., Settings], lenna: Path
) -> None:
    async with serve(make_settings(max_pixels=100_000)) as client:
        real = await client.post("/v1/restore", content=lenna.read_bytes())
        bomb = await client.post("/v1/restore", content=header_png(2_000, 2_000))
        huge = await client.post("/v1/restore", content=header_png(50_000, 50_000))
        metrics = (await client.get("/metrics")).text
    assert real.status_code == bomb.status_code == huge.status_code == 413
    assert "512x512" in real.json()["message"]
    assert "2000x2000" in bomb.json()["message"]
    assert "decompression bomb" in huge.json()["message"]
    assert 'dir_rejected_total{reason="too_large"} 3.0' in metrics


async def test_bad_parameters_are_422_and_406(make_settings: Callable[..., Settings], lenna: Path) -> None:
    async with serve(make_settings()) as client:
        quality = await client.post("/v1/restore?quality=0", content=lenna.read_bytes())
        fmt = await client.post("/v1/restore?format=gif", content=lenna.read_bytes())
        accept = await client.post(
            "/v1/restore", content=lenna.read_bytes(), headers={"Accept": "application/json"}
        )
        form = await client.post("/v1/restore", files={"other": ("x.png", lenna.read_bytes(), "image/png")})
    assert quality.status_code == fmt.status_code == form.status_code == 422
    assert accept.status_code == 406
    assert "file" in form.json()["message"]


async def test_queue_full_is_429_and_deadline_is_504(
    make_settings: Callable[..., Settings], dataset: Callable[[str], Path]
) -> None:
    small = (dataset("cset14") / "face.png").read_bytes()  # 276x276: 9 tiles of 128 px
    settings = make_settings(
        max_batch=1000, max_queue_delay_ms=600_000, queue_bound=12, request_timeout_s=1.0
    )
    async with serve(settings) as client:
        queue = client.app.state.service.queue  # type: ignore[attr-defined]
        first = asyncio.create_task(client.post("/v1/restore", content=small))
        while queue.depth == 0 and not first.done():
            await asyncio.sleep(0.01)
        second = await client.post("/v1/restore", content=small)
        first_response = await first
        metrics = (await client.get("/metrics")).text
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert "bound 12" in second.json()["message"]
    assert first_response.status_code == 504
    assert "deadline" in first_response.json()["message"]
    assert 'dir_rejected_total{reason="queue_full"} 1.0' in metrics
    assert 'dir_rejected_total{reason="deadline"} 1.0' in metrics


async def test_bad_input_never_500(make_settings: Callable[..., Settings], lenna: Path) -> None:
    png = lenna.read_bytes()
    garbage = [
        png[:40],
        png[:8] + b"\x00" * 100,
        b"\xff\xd8\xff" + b"\x00" * 50,
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    ]
    async with serve(make_settings()) as client:
        for body in garbage:
            for path in ("/v1/restore", "/v1/represent"):
                response = await client.post(path, content=body)
                assert 400 <= response.status_code < 500, (path, body[:12], response.text)


def test_exif_rotated_size_is_checked_before_decoding() -> None:
    from service.errors import TooLarge
    from service.imaging import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (400, 300)).save(buffer, format="JPEG")
    with pytest.raises(TooLarge, match="400x300"):
        decode_image(buffer.getvalue(), max_pixels=1000)
