"""The typed error tree (:mod:`server.errors`) -> HTTP, in one place: the error JSON and its status.

Every refusal the services raise, every body FastAPI cannot validate, every unknown route and
every unexpected exception leaves the server in its route family's shape, with the request id:
Anthropic's ``{"type": "error", "error": {...}}`` under ``/v1/messages``, OpenAI's everywhere else.
The security middleware's refusals (401, 413) and errors inside a stream come through here too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from server.api.middleware import REQUEST_ID_HEADER
from server.api.security import ASGIApp
from server.api.state import AppState
from server.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    LlamaserveError,
    MethodNotAllowedError,
    QueueFullError,
    RouteNotFoundError,
    openai_param,
)
from server.ops.logs import request_id_var

log = logging.getLogger(__name__)


ANTHROPIC_PREFIXES = ("/v1/messages", "/messages")  # the unprefixed twin too (see create_app)


def is_anthropic_route(path: str) -> bool:
    """``/v1/messages`` and everything under it speaks Anthropic's protocol (query strings aside)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in ANTHROPIC_PREFIXES)


def error_body(exc: LlamaserveError, path: str) -> dict[str, object]:
    return exc.to_anthropic_dict() if is_anthropic_route(path) else exc.to_dict()


def error_response(exc: LlamaserveError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="llamaserve"'}
    return JSONResponse(error_body(exc, path), status_code=exc.status_code, headers=headers)


def render_error(exc: LlamaserveError) -> ASGIApp:
    """The security middleware's renderer: the shape follows the path the refused request was for."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(exc, scope.get("path", ""))(scope, receive, send)

    return app


def _count_rejection(request: Request, exc: LlamaserveError) -> None:
    # queue_full is counted by the scheduler, which is where that refusal happens.
    if isinstance(exc, InvalidRequestError):
        reason = "context_overflow" if isinstance(exc, ContextLengthExceededError) else "invalid"
        state: AppState = request.app.state.llamaserve
        state.metrics.record_rejected(reason)


def install_error_handlers(app: FastAPI) -> None:
    async def on_llamaserve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LlamaserveError)
        _count_rejection(request, exc)
        return error_response(exc, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = openai_param(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            message = "We could not parse the JSON body of your request."
            param = None
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
        err = InvalidRequestError(message, param=param)
        _count_rejection(request, err)
        return error_response(err, request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(method, path), path)
        if exc.status_code == 404:
            return error_response(RouteNotFoundError(method, path), path)
        # Nothing else reaches here today; keep any other status starlette may raise, in our shape.
        err = InvalidRequestError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err, path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside the middlewares, after they left: bring the request id back.
        request_id = request.scope.get("state", {}).get("request_id")
        request_id_var.set(request_id)
        log.exception("unhandled error on %s", request.url.path)
        response = error_response(LlamaserveError("The server had an internal error."), request.url.path)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    app.add_exception_handler(LlamaserveError, on_llamaserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
