"""``create_app(settings)`` builds the FastAPI application; its lifespan loads models, queue and metrics.

Routes stay thin: read input, call ``Restorer``/the detector, encode. Every ``ServiceError`` is mapped to its
status code with a JSON ``ErrorBody`` at one boundary (:mod:`service.api.boundary`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.api.boundary import error_response, install_boundary
from service.api.jobs import JobRunner
from service.api.routes import detect, jobs, models, ops, represent, restore
from service.api.spec import API_VERSION
from service.api.state import ServiceState, build_state
from service.job_store import JobStore, MemoryJobStore, RedisJobStore
from service.memory import ReleaseMemory
from service.metrics import Metrics
from service.redact import Redactor, install_log_redaction
from service.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan: metrics, log redaction and the ``ServiceState`` for the app's life; closes the queue."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        app.state.metrics = metrics
        remove_log_redaction = install_log_redaction(app.state.redact)
        try:
            state = await build_state(settings, metrics)
            app.state.service = state
            store = build_job_store(settings)
            app.state.jobs = JobRunner(state, store, lambda exc: error_response(app, exc))
            try:
                yield
            finally:
                await app.state.jobs.close()
                await store.close()
                await state.close_queues()
        finally:
            remove_log_redaction()

    return lifespan


def build_job_store(settings: Settings) -> JobStore:
    """Jobs kept in Redis with the Redis queue (every replica answers for every job), else in memory."""
    if settings.uses_redis:
        return RedisJobStore(
            settings.queue, settings.stream_prefix, settings.job_ttl_s, settings.job_store_bytes
        )
    return MemoryJobStore(settings.job_ttl_s, settings.job_store_bytes)


def _shrink_arenas(app: FastAPI) -> None:
    state: ServiceState | None = getattr(app.state, "service", None)
    for served in state.served if state is not None else []:
        served.shrink_arenas()


def _index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing heavy happens here: models, queue and metrics are built in the lifespan."""
    settings = settings or Settings()
    app = FastAPI(
        title="DiR-ISP inference service",
        version=API_VERSION,
        description=(
            "Restoration, degradation-independent representations (DiR) and detection for camera ISP "
            "output (Guo, Luo, Wu, CVPR 2024). See docs/SERVICE.md."
        ),
        lifespan=_lifespan(settings),
    )
    app.state.metrics = None
    app.state.settings = settings
    app.state.redact = Redactor.for_urls(settings.queue)
    app.state.retry_after = settings.retry_after_s
    install_boundary(app, lambda: app.state.metrics)
    app.add_middleware(ReleaseMemory, shrink=lambda: _shrink_arenas(app))
    for routes in (ops, models, restore, represent, detect, jobs):
        # Flat, in path order: app.routes lists every path served (include_router would nest them).
        app.router.routes.extend(routes.router.routes)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
        app.get("/", include_in_schema=False)(_index)
    return app
