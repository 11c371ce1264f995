"""FastAPI dependencies: the app state (``StateDep``) and the API key checks (``AUTH``, ``OPS_AUTH``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.state import ServiceState
from service.http import check_api_key
from service.settings import Settings


def get_state(request: Request) -> ServiceState:
    """The ``ServiceState`` the lifespan stored on the app."""
    state: ServiceState = request.app.state.service
    return state


async def require_key(request: Request) -> None:
    """Route dependency: bearer API key check, run before any parameter is validated."""
    check_api_key(request, get_state(request).settings)


async def require_ops_key(request: Request) -> None:
    """Route dependency of /metrics: the API key check unless ``DIR_OPS_OPEN``."""
    settings: Settings = request.app.state.settings
    if not settings.ops_open:
        check_api_key(request, settings)


StateDep = Annotated[ServiceState, Depends(get_state)]
AUTH = [Depends(require_key)]
OPS_AUTH = [Depends(require_ops_key)]
