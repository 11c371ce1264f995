"""Every endpoint on the embedded backend, with real images (cset14, rni15, yolo_fastestv2 samples)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load as safetensors_load

from modelstore.store import ModelEntry
from service.settings import Settings
from service.tiling import plan_tiles
from tests.service.conftest import image_bytes, png_chunk, serve


def png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16) from (H, W, 3) uint16."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def crop_to(source: Path, target: Path, box: tuple[int, int, int, int], **save: object) -> Path:
    """Save a crop of a real image (crops keep the suite fast on the real model: one 256-px tile each)."""
    Image.open(source).crop(box).save(target, **save)  # type: ignore[arg-type]
    return target


@pytest.fixture
def lenna(dataset: Callable[[str], Path], tmp_path: Path) -> Path:
    """A 240x232 crop of cset14 lenna (PNG)."""
    return crop_to(dataset("cset14") / "lenna.png", tmp_path / "lenna.png", (140, 150, 380, 382))


@pytest.fixture
def camera_jpeg(dataset: Callable[[str], Path], tmp_path: Path) -> Path:
    """A 250x190 crop of a Yolo-FastestV2 sample photo, re-encoded as JPEG (quality 92)."""
    source = dataset("yolo_fastestv2") / "img" / "000004.jpg"
    return crop_to(source, tmp_path / "camera.jpg", (100, 100, 350, 290), quality=92)


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


async def test_restore_png_raw_body(
    api_settings: Callable[..., Settings], served_entry: ModelEntry, lenna: Path
) -> None:
    async with serve(api_settings()) as client:
        response = await client.post(
            "/v1/restore", content=lenna.read_bytes(), headers={"Content-Type": "image/png"}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == served_entry.manifest.version
    assert response.headers["x-model"] == served_entry.ref
    assert "compute;dur=" in response.headers["server-timing"]
    out = decode(response.content)
    assert out.size == (240, 232) and out.format == "PNG"
    source = np.asarray(Image.open(lenna).convert("RGB"), dtype=np.float32)
    restored = np.asarray(out, dtype=np.float32)
    assert np.corrcoef(restored.ravel(), source.ravel())[0, 1] > 0.5, (
        "the output should still depict the input"
    )


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        ("", "image/jpeg", "JPEG"),
        ("?format=png", "image/jpeg", "PNG"),
        ("?format=jpeg&quality=70", "", "JPEG"),
    ],
)
async def test_restore_output_format(
    api_settings: Callable[..., Settings], camera_jpeg: Path, query: str, accept: str, expected: str
) -> None:
    async with serve(api_settings()) as client:
        headers = {"Accept": accept} if accept else {}
        response = await client.post(f"/v1/restore{query}", content=camera_jpeg.read_bytes(), headers=headers)
    assert response.status_code == 200, response.text
    out = decode(response.content)
    assert out.format == expected
    assert out.size == Image.open(camera_jpeg).size


async def test_restore_multipart_jpeg_webp_and_16bit(
    api_settings: Callable[..., Settings], camera_jpeg: Path, dataset: Callable[[str], Path], tmp_path: Path
) -> None:
    rni = crop_to(sorted(dataset("rni15").glob("*.png"))[0], tmp_path / "rni.png", (0, 0, 200, 180))
    grey16 = io.BytesIO()
    grey = np.asarray(Image.open(rni).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(grey16, format="PNG")
    rgb16 = png16_rgb(np.asarray(Image.open(rni).convert("RGB"), dtype=np.uint16) * 257)
    async with serve(api_settings()) as client:
        multipart = await client.post(
            "/v1/restore", files={"file": ("cam.jpg", camera_jpeg.read_bytes(), "image/jpeg")}
        )
        webp = await client.post("/v1/restore", content=image_bytes(rni, "WEBP", quality=80))
        g16 = await client.post("/v1/restore", content=grey16.getvalue())
        c16 = await client.post("/v1/restore", content=rgb16)
    for response in (multipart, webp, g16, c16):
        assert response.status_code == 200, response.text
    assert decode(multipart.content).size == Image.open(camera_jpeg).size
    assert (
        decode(webp.content).size
        == decode(g16.content).size
        == decode(c16.content).size
        == Image.open(rni).size
    )


async def test_exif_orientation_is_applied(api_settings: Callable[..., Settings], camera_jpeg: Path) -> None:
    source = Image.open(camera_jpeg)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    async with serve(api_settings()) as client:
        response = await client.post("/v1/restore", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    width, height = source.size
    assert decode(response.content).size == (height, width)
    assert response.headers["x-image-size"] == f"{height}x{width}"


def latent_geometry(entry: ModelEntry) -> tuple[int, int]:
    """(channels, downscale) of ``r_plus`` from the manifest's symbolic shape ["N", C, "H/s", "W/s"]."""
    shape = next(o.shape for o in entry.manifest.outputs if o.name == "r_plus")
    return int(shape[1]), int(str(shape[2]).split("/")[1])


async def test_represent_formats(
    api_settings: Callable[..., Settings], served_entry: ModelEntry, camera_jpeg: Path
) -> None:
    body = camera_jpeg.read_bytes()
    width, height = Image.open(camera_jpeg).size
    channels, scale = latent_geometry(served_entry)
    latent = (channels, -(-height // scale), -(-width // scale))
    async with serve(api_settings()) as client:
        npy = await client.post("/v1/represent", content=body)
        r0 = await client.post("/v1/represent?outputs=r0", content=body)
        st = await client.post("/v1/represent?outputs=r_plus,r0,pilot&format=safetensors", content=body)
        js = await client.post("/v1/represent?outputs=r_plus&format=json", content=body)
    for response in (npy, r0, st, js):
        assert response.status_code == 200, response.text
    r_plus = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert r_plus.shape == latent and r_plus.dtype == np.float32
    assert npy.headers["x-array-shape"] == ",".join(map(str, latent))
    assert npy.headers["x-array-dtype"] == "float32"
    assert not np.allclose(np.load(io.BytesIO(r0.content)), r_plus)
    tensors = safetensors_load(st.content)
    assert set(tensors) == {"r_plus", "r0", "pilot"}
    np.testing.assert_array_equal(tensors["r_plus"], r_plus)
    payload = js.json()["arrays"]["r_plus"]
    assert payload["shape"] == list(latent) and payload["scale"] == scale
    decoded = np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4").reshape(latent)
    np.testing.assert_array_equal(decoded, r_plus)


@pytest.mark.parametrize("query", ["?outputs=r_plus,r0", "?outputs=nonsense", "?format=pickle"])
async def test_represent_bad_parameters(
    api_settings: Callable[..., Settings], lenna: Path, query: str
) -> None:
    async with serve(api_settings()) as client:
        response = await client.post(f"/v1/represent{query}", content=lenna.read_bytes())
    assert response.status_code == 422
    assert response.json()["message"]


async def test_detect_without_detector_is_503(
    api_settings: Callable[..., Settings], camera_jpeg: Path
) -> None:
    async with serve(api_settings()) as client:
        response = await client.post("/v1/detect", content=camera_jpeg.read_bytes())
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert "no detector installed" in response.json()["message"]
    assert "dir-models add-detector" in response.json()["message"]
    assert response.headers["retry-after"]
    assert ready.status_code == 200


async def test_ops_endpoints(api_settings: Callable[..., Settings], served_entry: ModelEntry) -> None:
    async with serve(api_settings()) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        models = await client.get("/v1/models")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["ready"] is True
    listing = models.json()
    assert listing["restore"] == served_entry.ref and listing["detect"] is None
    assert listing["restore_precision"] == "fp32"
    served = [m for m in listing["models"] if f"{m['name']}/{m['version']}" == served_entry.ref]
    assert served[0]["loaded"] is True
    assert served[0]["outputs"][:4] == ["restored", "r_plus", "r0", "pilot"]


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move(
    api_settings: Callable[..., Settings], served_entry: ModelEntry, lenna: Path
) -> None:
    async with serve(api_settings()) as client:
        before = (await client.get("/metrics")).text
        await client.post("/v1/restore", content=lenna.read_bytes())
        await client.post("/v1/restore", content=b"not an image")
        after = (await client.get("/metrics")).text
    model = served_entry.ref
    tile = served_entry.manifest.tile
    assert tile is not None
    tiles = plan_tiles(232, 240, tile.size, tile.overlap, served_entry.manifest.size_multiple).count
    ok = {"endpoint": "/v1/restore", "status": "200"}
    assert (
        _sample(after, "dir_request_duration_seconds_count", **ok)
        == _sample(before, "dir_request_duration_seconds_count", **ok) + 1
    )
    assert _sample(after, "dir_batch_size_count", model=model) > _sample(
        before, "dir_batch_size_count", model=model
    )
    assert _sample(after, "dir_batch_size_sum", model=model) >= tiles
    assert _sample(after, "dir_queue_wait_seconds_count", model=model) >= tiles
    assert _sample(after, "dir_compute_seconds_count", model=model) > 0
    assert "dir_queue_depth" in after
    assert _sample(after, "dir_rejected_total", reason="bad_input") == 1


async def test_api_keys(api_settings: Callable[..., Settings], lenna: Path) -> None:
    async with serve(api_settings(api_keys="k1, k2")) as client:
        missing = await client.post("/v1/restore", content=lenna.read_bytes())
        wrong = await client.post(
            "/v1/represent", content=lenna.read_bytes(), headers={"Authorization": "Bearer x"}
        )
        good = await client.post(
            "/v1/restore", content=lenna.read_bytes(), headers={"Authorization": "Bearer k2"}
        )
        models = await client.get("/v1/models")
        health = await client.get("/healthz")
        metrics_without_key = await client.get("/metrics")
        metrics = (await client.get("/metrics", headers={"Authorization": "Bearer k1"})).text
    assert missing.status_code == wrong.status_code == models.status_code == 401
    assert metrics_without_key.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert metrics_without_key.json()["error"] == "unauthorized"
    assert good.status_code == 200
    assert health.status_code == 200
    assert _sample(metrics, "dir_rejected_total", reason="unauthorized") == 4


async def test_static_demo_page(api_settings: Callable[..., Settings]) -> None:
    index = Path(__file__).resolve().parents[2] / "service" / "static" / "index.html"
    if not index.is_file():
        pytest.skip("service/static/index.html is absent")
    async with serve(api_settings()) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


async def test_tiny_image_latent_scale(
    api_settings: Callable[..., Settings], served_entry: ModelEntry
) -> None:
    """A 5x3 image: latent ceil(5/s) x ceil(3/s), and the scale header still says s."""
    buffer = io.BytesIO()
    Image.new("RGB", (3, 5), (200, 100, 50)).save(buffer, format="PNG")
    channels, scale = latent_geometry(served_entry)
    async with serve(api_settings()) as client:
        response = await client.post("/v1/represent", content=buffer.getvalue())
        restored = await client.post("/v1/restore", content=buffer.getvalue())
    assert response.status_code == 200
    assert response.headers["x-array-scales"] == f"r_plus={scale}"
    assert np.load(io.BytesIO(response.content)).shape == (channels, -(-5 // scale), -(-3 // scale))
    assert decode(restored.content).size == (3, 5)


async def test_auth_is_checked_before_anything_else(api_settings: Callable[..., Settings]) -> None:
    async with serve(api_settings(api_keys="k1")) as client:
        restore = await client.post("/v1/restore?format=gif", content=b"x", headers={"Accept": "text/plain"})
        represent = await client.post("/v1/represent?outputs=nonsense", content=b"x")
        detect = await client.post("/v1/detect", content=b"x")
    assert restore.status_code == represent.status_code == detect.status_code == 401
