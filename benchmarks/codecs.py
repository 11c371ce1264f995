"""12 MP JPEG decode and JPEG/PNG encode, side by side: Pillow (what service/imaging.py uses), simplejpeg,
OpenCV and PyTurboJPEG (only where the libturbojpeg shared library loads). Part of
``benchmarks/cpu_speed.py``."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from training.paths import dataset_dir


def photo_jpeg(width: int = 4000, height: int = 3000, quality: int = 90) -> bytes:
    """A ``width x height`` JPEG (4:2:0, ``quality``): a training photo resized with Lanczos plus Gaussian
    noise of sigma 3 (0..255), so it carries a camera photo's fine detail rather than smooth upscaling."""
    source = sorted((dataset_dir("bsds500_train") / "train").glob("*.jpg"))[0]
    image = Image.open(source).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(0).normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def _pillow_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _opencv_decode(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _pillow_encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _opencv_encode(pixels: np.ndarray, ext: str, flags: list[int]) -> bytes:
    ok, out = cv2.imencode(ext, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), flags)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {ext}")
    return bytes(out)


def _turbojpeg() -> object | None:
    """A PyTurboJPEG handle, or None where the package or libturbojpeg is missing."""
    try:
        from turbojpeg import TurboJPEG  # optional: PyTurboJPEG needs the libturbojpeg shared library

        return TurboJPEG()
    except (ImportError, OSError, RuntimeError):
        return None


def codec_calls(data: bytes, pixels: np.ndarray) -> dict[str, Callable[[], object]]:
    """name -> call: decode ``data`` (JPEG bytes) or encode ``pixels`` ((H, W, 3) uint8 sRGB)."""
    calls: dict[str, Callable[[], object]] = {
        "decode JPEG: Pillow": lambda: _pillow_decode(data),
        "decode JPEG: simplejpeg": lambda: simplejpeg.decode_jpeg(data, colorspace="RGB"),
        "decode JPEG: simplejpeg fastdct+fastupsample": lambda: simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True
        ),
        "decode JPEG: OpenCV": lambda: _opencv_decode(data),
        "encode JPEG q95: Pillow": lambda: _pillow_encode(pixels, "JPEG"),
        "encode JPEG q95: simplejpeg": lambda: simplejpeg.encode_jpeg(pixels, quality=95, colorspace="RGB"),
        "encode JPEG q95: OpenCV": lambda: _opencv_encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
        "encode PNG level 1: Pillow": lambda: _pillow_encode(pixels, "PNG"),
        "encode PNG level 1: OpenCV": lambda: _opencv_encode(
            pixels, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ),
    }
    turbo = _turbojpeg()
    if turbo is not None:
        calls["decode JPEG: PyTurboJPEG"] = lambda: turbo.decode(data)  # type: ignore[attr-defined]
    return calls


def codec_rows(data: bytes, repeats: int) -> list[str]:
    """Markdown rows: operation, ms (median of ``repeats`` interleaved rounds), ratio to Pillow, and for
    decoders the largest pixel difference (0..255) from Pillow's decode."""
    pixels = _pillow_decode(data)
    calls = codec_calls(data, pixels)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = []
    for name, seconds in medians.items():
        kind = name.split(":")[0]
        pillow = medians[f"{kind}: Pillow"]
        diff = "-"
        if kind.startswith("decode"):
            out = np.asarray(calls[name]())
            out = out[..., ::-1] if name.endswith("PyTurboJPEG") else out
            diff = str(int(np.abs(out.astype(np.int16) - pixels.astype(np.int16)).max()))
        rows.append(f"| {name} | {seconds * 1e3:.0f} | {seconds / pillow:.2f} | {diff} |")
    return rows
