"""Hostile input: generated payloads against every image endpoint, in process (httpx ASGI transport).

Claimed-size JPEGs, thin and tall PNGs, huge canvases, truncations at many points, bit flips, multipart
abuse and bad query parameters. Every answer must be a 200 (a mutant that still decodes) or a 4xx in the
error shape ``{"error", "message"}``: never a 5xx, never a hang (each request is timed).
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service.conftest import claimed_jpeg, header_png, png_chunk, serve

#: Seconds one hostile request may take (refusals take milliseconds; a mutant that decodes runs the tiny
#: fixture model on a 48x40 image). Generous: the machine may be busy.
PER_REQUEST_S = 5.0
SEED = 22


@dataclass
class Case:
    """One request: ``body`` posted with ``headers`` to ``query`` appended to each endpoint path."""

    name: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""


def small_images() -> dict[str, bytes]:
    """48x40 noisy sources: PNG, 16-bit greyscale PNG, JPEG, progressive JPEG, WebP."""
    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = {}
    for name, fmt, options in (
        ("png", "PNG", {}),
        ("jpeg", "JPEG", {"quality": 85}),
        ("jpeg-progressive", "JPEG", {"quality": 85, "progressive": True}),
        ("webp", "WEBP", {"quality": 80}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        out[name] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(buffer, format="PNG")
    out["png16"] = buffer.getvalue()
    return out


def real_png(width: int, height: int) -> bytes:
    """A complete, valid all-black RGB PNG of ``width x height`` (rows compress to almost nothing)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def header_cases() -> Iterator[Case]:
    """Sizes claimed by headers: the issue's payloads, thin, tall, huge and degenerate canvases."""
    for width, height in ((65000, 600), (600, 65000), (65535, 65535), (30000, 30000), (20000, 1)):
        yield Case(f"jpeg claims {width}x{height}", claimed_jpeg(width, height))
    for width, height in (
        (100_000, 10),
        (10, 100_000),
        (40_000_000, 1),
        (1, 40_000_000),
        (6324, 6324),
        (50_000, 50_000),
        (2**31 - 1, 2**31 - 1),
        (0, 100),
        (100, 0),
    ):
        yield Case(f"png claims {width}x{height}", header_png(width, height))
    yield Case("real png 100000x10", real_png(100_000, 10))
    yield Case("real png 20000x2", real_png(20_000, 2))


def truncation_cases(sources: dict[str, bytes]) -> Iterator[Case]:
    """Every source cut at 9 points from the signature to one byte short."""
    for name, data in sources.items():
        for cut in sorted(
            {1, 4, 8, 16, 33, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - 1}
        ):
            yield Case(f"{name} cut at {cut}/{len(data)}", data[:cut])


def bit_flip_cases(sources: dict[str, bytes], per_source: int = 24) -> Iterator[Case]:
    """Seeded mutants: 1 to 8 random bit flips, half of them within the first 64 bytes (the headers)."""
    rng = random.Random(SEED)
    for name, data in sources.items():
        for k in range(per_source):
            mutant = bytearray(data)
            span = min(64, len(data)) if k % 2 else len(data)
            for _ in range(rng.randint(1, 8)):
                mutant[rng.randrange(span)] ^= 1 << rng.randrange(8)
            yield Case(f"{name} bit flips #{k}", bytes(mutant))


def multipart(parts: list[bytes], boundary: str = "hostile", close: bool = True) -> bytes:
    """A multipart body from raw parts (each: part headers, blank line, content)."""
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def file_part(content: bytes, name: str = "file", filename: str = "x.png") -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + content


def multipart_cases(image: bytes) -> Iterator[Case]:
    """Malformed, oversized and misleading multipart bodies."""
    form = "multipart/form-data; boundary=hostile"
    yield Case(
        "multipart without boundary", multipart([file_part(image)]), {"Content-Type": "multipart/form-data"}
    )
    yield Case("multipart wrong boundary", multipart([file_part(image)], "other"), {"Content-Type": form})
    yield Case("multipart unterminated", multipart([file_part(image)], close=False), {"Content-Type": form})
    yield Case("multipart cut mid-part", multipart([file_part(image)])[:200], {"Content-Type": form})
    yield Case(
        "multipart two files",
        multipart([file_part(image), file_part(image, "file2")]),
        {"Content-Type": form},
    )
    text_fields = [f'Content-Disposition: form-data; name="f{i}"\r\n\r\nv'.encode() for i in range(12)]
    yield Case("multipart 12 fields", multipart([*text_fields, file_part(image)]), {"Content-Type": form})
    yield Case("multipart empty file", multipart([file_part(b"")]), {"Content-Type": form})
    yield Case(
        "multipart file as text field",
        multipart([b'Content-Disposition: form-data; name="file"\r\n\r\n' + image[:64]]),
        {"Content-Type": form},
    )
    yield Case("multipart part without headers", multipart([b"\r\n" + image]), {"Content-Type": form})
    yield Case(
        "multipart 64 KB part header",
        multipart([b"X-Junk: " + b"a" * 65536 + b"\r\n" + file_part(image)]),
        {"Content-Type": form},
    )
    long_boundary = "b" * 300
    yield Case(
        "multipart 300-char boundary",
        multipart([file_part(image)], long_boundary),
        {"Content-Type": f"multipart/form-data; boundary={long_boundary}"},
    )
    yield Case(
        "multipart traversal filename",
        multipart([file_part(image, filename="../../etc/passwd")]),
        {"Content-Type": form},
    )
    nested = (
        b'Content-Disposition: form-data; name="file"\r\n'
        b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
        b"--inner\r\n\r\nx\r\n--inner--"
    )
    yield Case("multipart nested mixed", multipart([nested]), {"Content-Type": form})
    yield Case("multipart header, raw image body", image, {"Content-Type": form})
    yield Case(
        "multipart header-bomb file", multipart([file_part(header_png(100_000, 10))]), {"Content-Type": form}
    )
    yield Case(
        "multipart claimed-jpeg file",
        multipart([file_part(claimed_jpeg(65000, 600))]),
        {"Content-Type": form},
    )


def other_cases(image: bytes) -> Iterator[Case]:
    """Bodies that are not images at all, misleading content types, bad query parameters."""
    yield Case("empty body", b"")
    yield Case("text", b"hello, this is text" * 10)
    yield Case("zeros", b"\x00" * 4096)
    yield Case("gif", b"GIF89a" + b"\x00" * 64)
    yield Case("png signature only", b"\x89PNG\r\n\x1a\n")
    yield Case("jpeg markers only", b"\xff\xd8\xff\xd9")
    yield Case("webp riff only", b"RIFF\x10\x00\x00\x00WEBPVP8 ")
    yield Case("json content type", image, {"Content-Type": "application/json"})
    for query in (
        "?mode=evil",
        "?format=gif",
        "?quality=-1",
        "?quality=abc",
        "?outputs=" + ",".join(["r_plus"] * 200),
        "?outputs=,,,",
        "?outputs=../etc",
        "?format=npy&outputs=r_plus,r0",
        "?conf=2",
        "?conf=nan",
        "?iou=-1",
        "?" + "&".join(f"x{i}=1" for i in range(500)),
    ):
        yield Case(f"query {query[:40]}", image, query=query)


def all_cases() -> list[Case]:
    sources = small_images()
    return [
        *header_cases(),
        *truncation_cases(sources),
        *bit_flip_cases(sources),
        *multipart_cases(sources["png"]),
        *other_cases(sources["png"]),
    ]


async def probe(
    client: httpx.AsyncClient, paths: list[str], cases: list[Case]
) -> tuple[list[str], dict[int, int]]:
    """Post every case to every path; returns (the problems found, count of each status)."""
    problems: list[str] = []
    statuses: dict[int, int] = {}
    for case in cases:
        for path in paths:
            started = time.perf_counter()
            response = await client.post(path + case.query, content=case.body, headers=case.headers)
            seconds = time.perf_counter() - started
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            where = f"{path}{case.query[:40]} <- {case.name}: {response.status_code}"
            if seconds > PER_REQUEST_S:
                problems.append(f"{where} took {seconds:.1f} s")
            if response.status_code >= 500 or (300 <= response.status_code < 400):
                problems.append(f"{where} {response.text[:200]}")
            elif response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if not isinstance(body, dict) or set(body) != {"error", "message"} or not body["message"]:
                    problems.append(f"{where} not in the error shape: {response.text[:200]}")
    return problems, statuses


async def test_hostile_payloads_never_5xx_restore_represent(make_settings: Callable[..., Settings]) -> None:
    cases = all_cases()
    assert len(cases) > 200
    async with serve(make_settings()) as client:
        problems, statuses = await probe(client, ["/v1/restore", "/v1/represent"], cases)
    assert not problems, "\n".join(problems)
    print(f"{len(cases)} cases x 2 endpoints: {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 0, "some mutants still decode (the suite reaches the model)"
    assert {413, 415, 422} <= set(statuses), statuses


async def test_hostile_payloads_never_5xx_detect(
    make_settings: Callable[..., Settings], detector_store: Path
) -> None:
    cases = [c for c in all_cases() if "bit flips" not in c.name or c.name.endswith(("#0", "#1", "#2", "#3"))]
    async with serve(make_settings(model_store=detector_store, detect_model="")) as client:
        problems, statuses = await probe(client, ["/v1/detect"], cases)
    assert not problems, "\n".join(problems)
    assert statuses.get(200, 0) > 0 and 413 in statuses and 422 in statuses, statuses


async def test_issue_payloads_are_refused_from_the_header(make_settings: Callable[..., Settings]) -> None:
    """The payloads of issue 22 each get their specific refusal, with the limits lifted one at a time."""
    async with serve(make_settings()) as client:
        aspect = await client.post("/v1/restore", content=real_png(100_000, 10))
        bomb = await client.post("/v1/restore", content=header_png(50_000, 50_000))
        pixels = await client.post("/v1/represent", content=header_png(7000, 7000))
    async with serve(make_settings(max_aspect=1e9, max_cost_pixels=10_000_000)) as client:
        cost = await client.post("/v1/restore", content=real_png(100_000, 10))
    async with serve(make_settings(min_side=16)) as client:
        side = await client.post("/v1/restore", content=real_png(20_000, 2))
    assert aspect.status_code == 422 and "100000x10: aspect ratio 1e+04:1" in aspect.json()["message"]
    assert bomb.status_code == 413 and "decompression bomb" in bomb.json()["message"]
    assert pixels.status_code == 413 and "the limit is 40000000" in pixels.json()["message"]
    assert (
        cost.status_code == 413 and "100000x10 image: 2083 tiles of 64 px x 2 passes = 17063936" in cost.text
    )
    assert "the limit is 10000000 tile pixels per request (DIR_MAX_COST_PIXELS)" in cost.text
    assert side.status_code == 422 and "shorter side 2 px" in side.json()["message"]


@pytest.mark.parametrize("kind", ["restore", "represent"])
async def test_truncated_sources_are_422_or_decoded(
    make_settings: Callable[..., Settings], kind: str
) -> None:
    """Cut PNG and WebP sources are 422 (or 415 when the signature is gone), naming the problem."""
    sources = small_images()
    async with serve(make_settings()) as client:
        for name in ("png", "webp", "png16"):
            data = sources[name]
            response = await client.post(f"/v1/{kind}", content=data[: len(data) // 2])
            assert response.status_code == 422, (name, response.text)
            assert response.json()["error"] == "bad_input"
