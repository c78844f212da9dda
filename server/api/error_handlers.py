"""The typed error tree (:mod:`server.errors`) -> HTTP, in one place: OpenAI's error JSON and its status.

Every refusal the services raise, every body FastAPI cannot validate, every unknown route and
every unexpected exception leaves the server in the same shape, with the request id.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.middleware import REQUEST_ID_HEADER
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


def error_response(exc: LlamaserveError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="llamaserve"'}
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


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
        return error_response(exc)

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
        return error_response(err)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(method, path))
        if exc.status_code == 404:
            return error_response(RouteNotFoundError(method, path))
        # Nothing else reaches here today; keep any other status starlette may raise, in our shape.
        err = InvalidRequestError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside the middlewares, after they left: bring the request id back.
        request_id = request.scope.get("state", {}).get("request_id")
        request_id_var.set(request_id)
        log.exception("unhandled error on %s", request.url.path)
        response = error_response(LlamaserveError("The server had an internal error."))
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    app.add_exception_handler(LlamaserveError, on_llamaserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
