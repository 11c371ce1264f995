"""The one error boundary (every error becomes a JSON ``ErrorBody``) and the request-duration metric."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelstore.errors import ModelStoreError
from service.errors import ModelStoreRefused, ServiceError
from service.metrics import Metrics
from service.schemas import ErrorBody


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def error_response(app: FastAPI, exc: ServiceError) -> JSONResponse:
    """The JSON ``ErrorBody`` answer of ``exc`` (its status, Retry-After where it asks for one)."""
    headers = {"Retry-After": str(app.state.retry_after)} if exc.retry_after else {}
    body = ErrorBody(error=exc.code, message=app.state.redact(exc.message)).model_dump()
    return JSONResponse(body, status_code=exc.status, headers=headers | exc.headers)


def install_boundary(app: FastAPI, metrics_of: Callable[[], Metrics | None]) -> None:
    """Error mapping and request metrics."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics = metrics_of()
        if exc.reason and metrics is not None:
            metrics.rejected.labels(exc.reason).inc()
        return error_response(app, exc)

    @app.exception_handler(ModelStoreError)
    async def _store_error(request: Request, exc: ModelStoreError) -> JSONResponse:
        """A model-store refusal met while serving (an entry gone or changed on disk): 503."""
        return await _service_error(request, ModelStoreRefused.from_store(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (404 no such path, 405 method not allowed) in the one error shape."""
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            message += f" (allowed: {exc.headers['Allow']})"
        body = ErrorBody(error=code, message=message).model_dump()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug: 500 in the one error shape, naming no internals (the traceback goes to the log)."""
        body = ErrorBody(error="internal", message="internal server error; see the server log").model_dump()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics = metrics_of()
        if metrics is not None:
            metrics.rejected.labels("bad_input").inc()
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(ErrorBody(error="bad_input", message=details).model_dump(), status_code=422)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        metrics = metrics_of()
        if metrics is not None:
            metrics.request_duration.labels(_route_label(request), str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response
