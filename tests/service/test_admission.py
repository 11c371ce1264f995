"""Admission by cost (service/admission.py), the JSON output cap and the heap trim after large requests."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service import admission, memory
from service.errors import BadInput, TooLarge
from service.imaging import decode_image
from service.settings import Settings
from service.tiling import choose_tile, tile_pixels
from tests.service.conftest import claimed_jpeg, header_png, serve


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def tiles_computed(client: httpx.AsyncClient) -> float:
    """Tiles the model has computed so far (``dir_batch_size_sum`` over every model label)."""
    text = (await client.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("dir_batch_size_sum"))


def rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    """A ``width x height`` JPEG whose EXIF orientation (6 or 8) shows it ``height x width``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.sampled_from([(64, 128), (256, 512), (64,), (128, 256, 512)]),
    st.sampled_from([0, 16, 32]),
    st.sampled_from([1, 4, 16]),
)
def test_tile_pixels_counts_the_grid_choose_tile_picks(
    h: int, w: int, sizes: tuple[int, ...], overlap: int, multiple: int
) -> None:
    grid = choose_tile(h, w, sizes, overlap, multiple)
    assert tile_pixels(h, w, sizes, overlap, multiple) == (grid.tile, grid.count)
    assert tile_pixels(w, h, sizes, overlap, multiple) == (grid.tile, grid.count), "transpose-invariant"


def test_tile_pixels_of_a_claimed_header_is_instant() -> None:
    started = time.perf_counter()
    side, tiles = tile_pixels(1, 40_000_000, (256, 512), 32, 4)
    assert time.perf_counter() - started < 0.01
    assert (side, tiles) == (256, 178_572)
    with pytest.raises(BadInput):
        tile_pixels(10, 10, (62,), 16, 4)


def test_shape_checks_name_the_limit() -> None:
    limits = Settings(min_side=16, max_aspect=32)
    admission.check_shape(16, 512, limits)
    with pytest.raises(BadInput, match=r"100000x10: its shorter side 10 px is under the minimum of 16"):
        admission.check_shape(100_000, 10, limits)
    with pytest.raises(BadInput, match=r"aspect ratio 33:1 is over the maximum of 32:1 \(DIR_MAX_ASPECT\)"):
        admission.check_shape(16, 528, limits)


def test_header_admission_runs_before_decoding() -> None:
    seen: list[tuple[int, int]] = []

    def refuse(width: int, height: int) -> None:
        seen.append((width, height))
        raise TooLarge("refused")

    with pytest.raises(TooLarge, match="refused"):
        decode_image(header_png(3000, 2000), max_pixels=10**8, admit=refuse)
    assert seen == [(3000, 2000)]
    with pytest.raises(TooLarge, match="the limit is 100"):  # the pixel limit comes first
        decode_image(header_png(3000, 2000), max_pixels=100, admit=refuse)
    assert len(seen) == 1


async def test_issue_payloads_refused_in_milliseconds(
    api_settings: Callable[..., Settings], make_settings: Callable[..., Settings]
) -> None:
    """The issue's 1 KB payloads (a JPEG claiming 65000x600, PNGs of 100000x10 and 40000000x1): refused by the
    aspect ratio with the defaults, and by the cost alone when the aspect limit is lifted, on the committed
    model in every mode."""
    payloads = {
        "65000x600": claimed_jpeg(65000, 600),
        "100000x10": header_png(100_000, 10),
        "40000000x1": header_png(40_000_000, 1),
    }
    assert all(len(p) < 1024 for p in payloads.values())
    async with serve(api_settings()) as client:
        for size, body in payloads.items():
            for path in ("/v1/restore?mode=full", "/v1/represent", "/v1/detect"):
                started = time.perf_counter()
                response = await client.post(path, content=body)
                assert time.perf_counter() - started < 1.0, (path, size)
                if path == "/v1/detect":
                    assert response.status_code == 503  # no detector here: refused before the body
                    continue
                assert response.status_code == 422, (path, size, response.text)
                assert f"image is {size}" in response.json()["message"]
                assert "DIR_MAX_ASPECT" in response.json()["message"]
    async with serve(api_settings(max_aspect=1e9)) as client:
        for size, body in payloads.items():
            started = time.perf_counter()
            response = await client.post("/v1/restore?mode=full", content=body)
            assert time.perf_counter() - started < 1.0, size
            assert response.status_code == 413, (size, response.text)
            message = response.json()["message"]
            assert f"{size} image:" in message and "x 2 passes" in message
            assert "the limit is 50000000 tile pixels per request (DIR_MAX_COST_PIXELS)" in message
        metrics = (await client.get("/metrics")).text
    assert 'dir_rejected_total{reason="too_large"} 3.0' in metrics


async def test_cost_depends_on_the_mode_and_the_endpoint(api_settings: Callable[..., Settings]) -> None:
    """``full`` on a two-pass entry costs two passes, ``denoise`` one; ``/v1/represent`` always runs
    ``full``: a cap between the two refuses ``full`` and ``/v1/represent`` but serves ``denoise``."""
    async with serve(api_settings()) as client:
        restorer = client.app.state.service.restorer  # type: ignore[attr-defined]
        if "denoise" not in restorer.modes or restorer.model.guide is None:
            pytest.skip("the served entry is not a two-pass entry with a denoise graph")
        full = admission.request_cost(restorer, 65000, 600, "full")
        denoise = admission.request_cost(restorer, 65000, 600, "denoise")
        small = admission.request_cost(restorer, 300, 200, "denoise").pixels
    assert (full.passes, denoise.passes) == (2, 1) and full.pixels == 2 * denoise.pixels
    if restorer.tiles == (256, 512) and restorer.overlap == 32:
        assert full.describe() == "65000x600 image: 873 tiles of 256 px x 2 passes = 114425856 tile pixels"
    body = png(300, 200)
    async with serve(api_settings(max_cost_pixels=small, restore_mode="denoise")) as client:
        refused = await client.post("/v1/restore?mode=full", content=body)
        represent = await client.post("/v1/represent", content=body)
        served = await client.post("/v1/restore", content=body)
    assert refused.status_code == represent.status_code == 413
    assert (
        "x 2 passes" in refused.json()["message"] and "or ask for mode=denoise" in refused.json()["message"]
    )
    assert served.status_code == 200 and served.headers["x-restore-mode"] == "denoise"


async def test_exif_rotation_cannot_change_the_verdict(make_settings: Callable[..., Settings]) -> None:
    """A 40x400 JPEG shown as 400x40 (orientation 6) or stored 400x40 (orientation 8): same verdicts."""
    async with serve(make_settings(max_aspect=8)) as client:
        tall = await client.post("/v1/restore", content=rotated_jpeg(40, 400, 6))
        wide = await client.post("/v1/restore", content=rotated_jpeg(400, 40, 8))
    assert tall.status_code == wide.status_code == 422
    assert "aspect ratio 10:1" in tall.json()["message"]
    async with serve(make_settings()) as client:
        restorer = client.app.state.service.restorer  # type: ignore[attr-defined]
        cost = admission.request_cost(restorer, 40, 400, "full").pixels
        assert cost == admission.request_cost(restorer, 400, 40, "full").pixels
    async with serve(make_settings(max_cost_pixels=cost - 1)) as client:
        tall = await client.post("/v1/restore", content=rotated_jpeg(40, 400, 6))
    async with serve(make_settings(max_cost_pixels=cost)) as client:
        served = await client.post("/v1/restore", content=rotated_jpeg(40, 400, 6))
    assert tall.status_code == 413 and f"= {cost} tile pixels" in tall.json()["message"]
    assert served.status_code == 200 and served.headers["x-image-size"] == "400x40"


async def test_min_side_is_a_setting(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings()) as client:
        tiny = await client.post("/v1/restore", content=png(3, 5))
    async with serve(make_settings(min_side=4)) as client:
        refused = await client.post("/v1/restore", content=png(3, 5))
    assert tiny.status_code == 200
    assert refused.status_code == 422 and "shorter side 3 px is under the minimum of 4" in refused.text


async def test_json_representation_over_the_cap_is_413_before_computing(
    make_settings: Callable[..., Settings],
) -> None:
    body = png(200, 160)
    async with serve(make_settings(max_json_bytes=100_000)) as client:
        small = await client.post("/v1/represent?format=json", content=png(40, 32))
        before = await tiles_computed(client)
        big = await client.post("/v1/represent?outputs=r_plus,r0,pilot&format=json", content=body)
        after = await tiles_computed(client)
        npy = await client.post("/v1/represent?outputs=r_plus&format=npy", content=body)
    assert small.status_code == 200 and npy.status_code == 200
    assert big.status_code == 413
    message = big.json()["message"]
    assert (
        "format=json would carry" in message and "the limit is 100000 bytes (DIR_MAX_JSON_BYTES)" in message
    )
    assert "format=npy" in message
    assert before > 0 and after == before, "refused from the header: no tile computed"


async def test_json_cap_checks_the_computed_arrays_when_the_manifest_cannot_tell(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admission, "json_array_bytes", lambda *args: None)
    async with serve(make_settings(max_json_bytes=100_000)) as client:
        big = await client.post("/v1/represent?outputs=r_plus,r0,pilot&format=json", content=png(200, 160))
    assert big.status_code == 413
    assert "r_plus=" in big.json()["message"] and "format=npy" in big.json()["message"]


def test_release_memory_trims_on_glibc() -> None:
    result = memory.release_memory()
    assert isinstance(result, bool)
    if Path("/lib/x86_64-linux-gnu/libc.so.6").exists() or Path("/lib/aarch64-linux-gnu/libc.so.6").exists():
        assert memory._malloc_trim() is not None


async def test_heap_trimmed_after_a_large_request_only(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def release(shrink: Callable[[], None] | None = None) -> bool:
        assert shrink is not None  # the app's ONNX Runtime arenas are shrunk first
        calls.append(1)
        return True

    monkeypatch.setattr(memory, "release_memory", release)
    async with serve(make_settings()) as client:
        restorer = client.app.state.service.restorer  # type: ignore[attr-defined]
        monkeypatch.setattr(
            memory, "TRIM_ABOVE_PIXELS", admission.request_cost(restorer, 200, 160, "full").pixels
        )
        small = await client.post("/v1/restore", content=png(40, 32))
        refused = await client.post("/v1/restore", content=header_png(100_000, 10))
        assert calls == []
        large = await client.post("/v1/restore", content=png(200, 160))
    assert small.status_code == 200 and refused.status_code == 422 and large.status_code == 200
    assert calls == [1]
