"""``POST /v1/represent``: the DiR representation r+ (and r0 / pilot) as .npy, safetensors or JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from service import admission
from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY
from service.api.state import ServiceState
from service.api.work import decode, infer, timing_headers
from service.errors import BadInput
from service.http import b64_array, npy_bytes, parse_outputs, safetensors_bytes
from service.imaging import DecodedImage
from service.schemas import ArrayPayload, RepresentJson

router = APIRouter(tags=["models"], dependencies=AUTH)


def _json_response(
    state: ServiceState,
    image: DecodedImage,
    arrays: dict[str, np.ndarray],
    scales: dict[str, int],
    headers: dict[str, str],
) -> JSONResponse:
    """The arrays (float32, CHW) base64-encoded in a ``RepresentJson``; ``TooLarge`` over the JSON limit."""
    encoded = sum(admission.base64_size(a.nbytes) for a in arrays.values())
    admission.check_json_size(encoded, state.settings, f"{', '.join(arrays)}: {headers['X-Array-Shapes']}")
    payload = RepresentJson(
        model=state.model.ref,
        width=image.width,
        height=image.height,
        arrays={
            n: ArrayPayload(shape=list(a.shape), dtype="float32", scale=scales[n], data=b64_array(a))
            for n, a in arrays.items()
        },
    )
    return JSONResponse(payload.model_dump(), headers=headers)


@router.post(
    "/v1/represent",
    summary="The DiR representation r+ (and r0 / pilot on request) as .npy, safetensors or JSON",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses={
        200: {
            "model": RepresentJson,
            "description": ".npy or safetensors bytes (octet-stream), or JSON with format=json",
            "content": {"application/octet-stream": {}},
        },
        **ERRORS,
    },
)
async def represent(
    request: Request,
    state: StateDep,
    outputs: str = Query("r_plus", description="comma-separated: r_plus, r0, pilot (restored also allowed)"),
    format: Literal["npy", "safetensors", "json"] = Query(
        "npy", description="npy (one output), safetensors or json (base64; for small images)"
    ),
) -> Response:
    started = time.perf_counter()
    names = parse_outputs(outputs)
    state.restorer.check_outputs(names)
    if format == "npy" and len(names) != 1:
        raise BadInput(
            f"format=npy carries one array, {len(names)} requested ({names}); use safetensors or json"
        )
    deadline = state.deadline(started)
    image, decode_s = await decode(request, state, deadline, "full", names if format == "json" else None)
    result = await infer(request, state, image, names, deadline)
    headers = timing_headers(
        state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
    )
    arrays = result.arrays
    scales = result.scales
    headers["X-Array-Names"] = ",".join(names)
    headers["X-Array-Shapes"] = ";".join(f"{n}={'x'.join(map(str, a.shape))}" for n, a in arrays.items())
    headers["X-Array-Dtype"] = "float32"
    headers["X-Array-Layout"] = "CHW"
    headers["X-Array-Scales"] = ",".join(f"{n}={s}" for n, s in scales.items())
    if format == "json":
        return _json_response(state, image, arrays, scales, headers)
    if format == "safetensors":
        meta = {
            "model": state.model.ref,
            "layout": "CHW",
            "width": str(image.width),
            "height": str(image.height),
        }
        body = await asyncio.to_thread(safetensors_bytes, arrays, meta)
        return Response(body, media_type="application/octet-stream", headers=headers)
    array = arrays[names[0]]
    headers["X-Array-Shape"] = ",".join(map(str, array.shape))
    return Response(npy_bytes(array), media_type="application/octet-stream", headers=headers)
