"""Request/response helpers for the routes: body reading with limits, auth, content negotiation, encoders."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncGenerator

import numpy as np
from fastapi import Request
from safetensors.numpy import save as safetensors_save
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.errors import BadInput, ClientClosed, NotAcceptable, RequestTimeout, TooLarge, Unauthorized
from service.settings import Settings

IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}
log = logging.getLogger("dir.service")

ACCEPT_IMAGE = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/*": "png", "*/*": "png"}


def has_api_key(request: Request, settings: Settings) -> bool:
    """True when keys are off or ``Authorization: Bearer <key>`` names a known key."""
    keys = settings.api_key_set
    if not keys:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token.strip() in keys


def check_api_key(request: Request, settings: Settings) -> None:
    """Raise ``Unauthorized`` (with ``WWW-Authenticate``) unless :func:`has_api_key`."""
    if not has_api_key(request, settings):
        raise Unauthorized("missing or unknown API key: send 'Authorization: Bearer <key>'")


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def read_image_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The image bytes of a raw body or of multipart field ``file``; ``TooLarge`` past ``limit`` bytes.

    The Content-Length header is checked before reading; chunked bodies are counted while streaming and
    refused at the first chunk past the limit, before the rest is read. ``RequestTimeout`` when the body has
    not all arrived ``timeout_s`` after reading began; ``ClientClosed`` (one log line, no traceback) when
    the client disconnects before the end of its body.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s ({size} bytes read); "
            "DIR_BODY_TIMEOUT_S bounds it"
        ) from exc
    except ClientDisconnect as exc:
        log.info(
            "client %s disconnected after %d bytes of its %s body",
            _peer(request),
            size,
            request.url.path,
        )
        raise ClientClosed(f"the client disconnected after {size} bytes of the body") from exc
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise BadInput(f"malformed multipart body: {exc.message}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadInput("multipart body has no file field named 'file'")
    data = await upload.read()
    await form.close()
    return data


def image_format(fmt: str | None, accept: str) -> str:
    """Output format: the ``format`` parameter when given, else the first image type in Accept, else PNG."""
    if fmt:
        chosen = IMAGE_FORMATS.get(fmt.lower())
        if chosen is None:
            raise BadInput(f"format={fmt!r} is not one of png, jpeg")
        return chosen
    if not accept.strip():
        return "png"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ACCEPT_IMAGE:
            return ACCEPT_IMAGE[media]
    raise NotAcceptable(
        f"Accept {accept!r} names no image type this endpoint produces (image/png, image/jpeg)"
    )


def parse_outputs(outputs: str) -> list[str]:
    """``"r_plus,r0"`` -> ``["r_plus", "r0"]`` (order kept, duplicates dropped)."""
    names = [o.strip() for o in outputs.split(",") if o.strip()]
    return list(dict.fromkeys(names))


def npy_bytes(array: np.ndarray) -> bytes:
    """A single array as ``.npy`` bytes (NumPy format 1.0, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Several named arrays as one safetensors file."""
    return safetensors_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)


def b64_array(array: np.ndarray) -> str:
    """Little-endian C-order bytes of ``array``, base64."""
    return base64.b64encode(
        np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    ).decode()
