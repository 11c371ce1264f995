"""``POST /v1/represent``: the DiR representation r+ (and r0 / pilot) as .npy, safetensors or JSON."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from service import admission
from service.api.deps import AUTH, StateDep
from service.api.spec import ERRORS, IMAGE_BODY, MODEL_HELP
from service.api.state import ServiceState
from service.api.work import InferFn, Work, answer, timing_headers
from service.errors import BadInput
from service.http import b64_array, npy_bytes, parse_outputs, safetensors_bytes
from service.imaging import DecodedImage
from service.inference import Inference
from service.job_store import Reply
from service.schemas import ArrayPayload, RepresentJson

router = APIRouter(tags=["models"], dependencies=AUTH)

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": RepresentJson,
        "description": ".npy or safetensors bytes (octet-stream), or JSON with format=json",
        "content": {"application/octet-stream": {}},
    },
    **ERRORS,
}


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


@dataclass
class RepresentQuery:
    """The query of ``/v1/represent`` (and ``/v1/jobs/represent``)."""

    outputs: str = Query("r_plus", description="comma-separated: r_plus, r0, pilot (restored also allowed)")
    format: Literal["npy", "safetensors", "json"] = Query(
        "npy", description="npy (one output), safetensors or json (base64; for small images)"
    )
    model: str | None = Query(None, description=MODEL_HELP)


def _array_headers(arrays: dict[str, np.ndarray], scales: dict[str, int]) -> dict[str, str]:
    return {
        "X-Array-Names": ",".join(arrays),
        "X-Array-Shapes": ";".join(f"{n}={'x'.join(map(str, a.shape))}" for n, a in arrays.items()),
        "X-Array-Dtype": "float32",
        "X-Array-Layout": "CHW",
        "X-Array-Scales": ",".join(f"{n}={s}" for n, s in scales.items()),
    }


async def _encode(
    state: ServiceState, image: DecodedImage, result: Inference, fmt: str, headers: dict[str, str]
) -> Reply:
    """The arrays as .npy (one), safetensors or JSON."""
    arrays = result.arrays
    if fmt == "json":
        response = _json_response(state, image, arrays, result.scales, headers)
        return Reply(bytes(response.body), "application/json", headers)
    if fmt == "safetensors":
        meta = {
            "model": state.model.ref,
            "layout": "CHW",
            "width": str(image.width),
            "height": str(image.height),
        }
        body = await asyncio.to_thread(safetensors_bytes, arrays, meta)
        return Reply(body, "application/octet-stream", headers)
    array = next(iter(arrays.values()))
    headers["X-Array-Shape"] = ",".join(map(str, array.shape))
    return Reply(npy_bytes(array), "application/octet-stream", headers)


RepresentQueryDep = Annotated[RepresentQuery, Depends()]


def represent_work(state: ServiceState, query: RepresentQuery) -> Work:
    """Check the query (422 for unknown outputs, several with ``format=npy``) -> the work: the arrays
    ``(C, ceil(H/s), ceil(W/s))`` float32 in ``format``, described by ``X-Array-*`` headers."""
    names = parse_outputs(query.outputs)
    state.restorer.check_outputs(names)
    if query.format == "npy" and len(names) != 1:
        raise BadInput(
            f"format=npy carries one array, {len(names)} requested ({names}); use safetensors or json"
        )

    async def produce(image: DecodedImage, infer: InferFn, decode_s: float, started: float) -> Reply:
        result = await infer(image, names, "full")
        headers = timing_headers(
            state, decode_s, result.queue_wait_s, result.compute_s, time.perf_counter() - started
        )
        headers.update(_array_headers(result.arrays, result.scales))
        return await _encode(state, image, result, query.format, headers)

    def result_bytes(width: int, height: int) -> int:
        size = admission.json_array_bytes(state.restorer, names, width, height)
        return (size or 4 * 16 * width * height * len(names)) + (1 << 20)

    return Work(state, "represent", "full", names if query.format == "json" else None, produce, result_bytes)


@router.post(
    "/v1/represent",
    summary="The DiR representation r+ (and r0 / pilot on request) as .npy, safetensors or JSON",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses=RESPONSES,
)
async def represent(request: Request, state: StateDep, query: RepresentQueryDep) -> Response:
    started = time.perf_counter()
    return await answer(request, represent_work(state.select(query.model), query), started)
