"""How a route finds its model: by the request's ``model`` (None: the first), through the registry."""

from __future__ import annotations

import secrets

from fastapi import Request

from server.api.state import AppState, AppStatus
from server.errors import ServiceUnavailableError
from server.services.model import LoadedModel
from server.services.pipeline import ANONYMOUS, Caller


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.llamaserve
    return state


def check_serving(state: AppState) -> None:
    """503 until the models first load (and after a failed load), and while draining."""
    if state.status is AppStatus.OK:
        return
    reason = "is shutting down" if state.status is AppStatus.DRAINING else "is loading the model"
    raise ServiceUnavailableError(f"The server {reason}; try again shortly.")


async def model_for(request: Request, model: str | None) -> LoadedModel:
    """The requested model's services, loaded first if it was unloaded (one model or several alike)."""
    state = app_state(request)
    check_serving(state)
    return await state.registry.get(model)


def caller_of(request: Request) -> Caller:
    """Who sent the request, as :class:`~server.api.security.SecurityMiddleware` found it."""
    caller = getattr(request.state, "caller", ANONYMOUS)
    return caller if isinstance(caller, Caller) else ANONYMOUS


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
