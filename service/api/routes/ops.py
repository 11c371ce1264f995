"""Operations: liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

from contextlib import suppress

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import OPS_AUTH, StateDep
from service.api.spec import ERRORS
from service.api.state import ServiceState
from service.errors import Unavailable
from service.http import has_api_key
from service.schemas import ReadyResponse
from service.settings import Settings

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness (always open)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: restoration model loaded and queue reachable",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
)
async def readyz(request: Request) -> JSONResponse:
    state: ServiceState | None = getattr(request.app.state, "service", None)
    settings: Settings = request.app.state.settings
    checks = {"model": state.model.ref if state else "not loaded"}
    ready = state is not None
    if state is not None:
        try:
            await state.queue.ping()
            checks["queue"] = await state.queue.status()
        except Unavailable as exc:
            checks["queue"] = exc.message
            ready = False
        checks["detector"] = state.detector.manifest.name if state.detector else state.detector_error
    if settings.ops_open or has_api_key(request, settings):
        checks = {name: request.app.state.redact(text) for name, text in checks.items()}
    else:
        checks = {"detail": "the checks need 'Authorization: Bearer <key>' (DIR_API_KEYS)"}
    body = ReadyResponse(ready=ready, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=OPS_AUTH,
    summary="Prometheus metrics (needs the API key when DIR_API_KEYS is set, unless DIR_OPS_OPEN)",
    response_class=Response,
    responses={401: ERRORS[401]},
)
async def metrics_endpoint(state: StateDep) -> Response:
    with suppress(Unavailable):  # Redis down: the gauge reads 0, the rest is served
        await state.queue.worker_count()  # refreshes dir_live_workers (Redis mode)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
