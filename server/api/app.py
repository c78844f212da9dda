"""The one composition root: ``create_app`` wires settings, engine, scheduler, service and routes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.routes import openai as openai_routes
from server.api.routes import ops as ops_routes
from server.api.routes import templates as template_routes
from server.api.routes import tokens as token_routes
from server.api.security import SecurityMiddleware, ui_public_paths
from server.api.state import AppState
from server.engine.base import Engine
from server.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    LlamaserveError,
    QueueFullError,
    openai_param,
)
from server.ops.logs import request_id_var
from server.ops.metrics import Metrics
from server.runtime.scheduler import Scheduler
from server.services.chat import ChatService
from server.services.limits import RequestLimits
from server.services.registry import LoadedModel, ModelRegistry, uses_registry
from server.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]


# For tests only: tests/live/test_shutdown.py runs the real CLI (`python -m server`) as a subprocess
# and needs it to serve the fake engine. The value is a JSON object of FakeEngine arguments ("reply"
# a fixed string). Deliberately not a setting: it is in no --help, config file or README table.
FAKE_ENGINE_ENV = "_LLAMASERVE_FAKE_ENGINE"


def fake_engine_from_env() -> EngineFactory | None:
    spec = os.environ.get(FAKE_ENGINE_ENV)
    if not spec:
        return None

    def factory(settings: Settings) -> Engine:
        from server.engine.fake import FakeEngine

        kwargs = json.loads(spec)
        reply = str(kwargs.pop("reply", "The quick brown fox jumps over the lazy dog."))
        log.warning("serving the FAKE test engine, because %s is set", FAKE_ENGINE_ENV)
        return FakeEngine(reply=lambda prompt: reply, **kwargs)

    return factory


def load_llama_engine(settings: Settings) -> Engine:
    # Imported here so that the API layer and its tests never need llama.cpp.
    from server.engine.llama.engine import LlamaEngine
    from server.engine.llama.model_files import default_model_id, resolve_model_path

    path = resolve_model_path(settings.model)
    engine = LlamaEngine(
        str(path),
        model_id=settings.alias or default_model_id(path),
        n_slots=settings.parallel,
        n_ctx_per_seq=settings.ctx_size,
        n_batch=settings.batch_size,
        n_threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
    )
    info = engine.info
    log.info(
        "loaded %s: %d slots x %d context tokens each, KV cache %.1f MiB",
        info.id,
        info.n_slots,
        info.n_ctx_per_seq,
        info.kv_cache_bytes / 2**20,
    )
    return engine


def _serve_model(state: AppState, settings: Settings, engine: Engine) -> LoadedModel:
    """One model's scheduler and service (each model of a registry gets its own)."""
    model_id = settings.alias if state.registry is not None and settings.alias else engine.info.id
    metrics = state.metrics.model(model_id)
    metrics.set_model(engine.info)
    scheduler = Scheduler(
        engine,
        max_queue=settings.max_queue,
        hooks=metrics,
        request_timeout=settings.request_timeout,
    )
    metrics.watch(scheduler)
    scheduler.start()
    service = ChatService(
        engine,
        scheduler,
        model_id=model_id,
        limits=RequestLimits.from_settings(settings),
        chat_template=settings.chat_template,
    )

    def close() -> None:
        scheduler.stop()
        service.embeddings.close()
        engine.close()

    return LoadedModel(engine, scheduler, service, close)


def _start_serving(state: AppState, engine: Engine) -> None:
    loaded = _serve_model(state, state.settings, engine)
    state.engine, state.scheduler, state.service = loaded.engine, loaded.scheduler, loaded.service
    state.status = "ok"


def _start_registry(state: AppState, factory: EngineFactory) -> asyncio.Task[None]:
    """Several models (server/services/registry.py): the first one's service also answers /health, /tokenize."""

    def on_change(model_id: str, loaded: LoadedModel | None) -> None:
        if loaded is None:
            state.metrics.model(model_id).forget()
        if model_id == registry.default_id:
            state.engine = loaded.engine if loaded else None
            state.scheduler = loaded.scheduler if loaded else None
            state.service = loaded.service if loaded else None

    s = state.settings
    registry = ModelRegistry(
        s.model_settings(),
        load=factory,
        serve=lambda settings, engine: _serve_model(state, settings, engine),
        max_loaded=s.max_loaded_models,
        idle_unload=s.idle_unload,
        on_change=on_change,
    )
    state.registry = registry
    for model_id in registry.ids:
        state.metrics.model(model_id)  # its counters at 0 before its first load, so rate() sees the first event

    async def start() -> None:
        try:
            await registry.start()
        except Exception as exc:
            log.exception("models failed to load")
            state.status = "error"
            state.load_error = str(exc)
            return
        state.status = "ok"

    return asyncio.create_task(start())


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """Build the app. Give ``engine`` (a fake, in tests) or let the lifespan load llama.cpp."""
    settings = settings or Settings()
    state = AppState(settings=settings)
    factory = engine_factory or fake_engine_from_env() or load_llama_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if engine is not None:
            _start_serving(state, engine)
        elif uses_registry(settings):
            loader = _start_registry(state, factory)
        else:

            async def load() -> None:
                # Loading runs off the event loop so /health can answer 503 meanwhile.
                try:
                    loaded = await asyncio.to_thread(factory, settings)
                except Exception as exc:
                    log.exception("model failed to load")
                    state.status = "error"
                    state.load_error = str(exc)
                    return
                _start_serving(state, loaded)

            loader = asyncio.create_task(load())
        try:
            yield
        finally:
            state.status = "draining"
            if loader is not None:
                loader.cancel()
            if state.registry is not None:
                await state.registry.close()  # closes every model; state's fields point into it
            if state.scheduler is not None:
                await asyncio.to_thread(state.scheduler.stop)
            if state.service is not None:
                state.service.embeddings.close()
            if state.engine is not None and engine is None:
                state.engine.close()

    app = FastAPI(title="llamaserve", version="0.1.0", lifespan=lifespan)
    app.state.llamaserve = state
    _install_security(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    if settings.cors_origins:
        # Outermost, so that preflights are answered before the key check and 401s carry CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if "*" in settings.cors_origins else settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Api-Key", "X-Request-Id"],
            expose_headers=["Retry-After", "X-Request-Id"],
        )
    _install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(ops_routes.router)
    app.include_router(template_routes.router)
    app.include_router(token_routes.router)
    # Mounted last: every API route above wins over a file of the same name.
    if WEB_DIR.is_dir():
        app.mount("/", WebFiles(directory=WEB_DIR, html=True), name="web")
    else:
        # A wheel install carries server/ only; the API still works, so say why "/" is a 404.
        log.warning("web UI files not found at %s; serving the API only", WEB_DIR)
    return app


def _error_response(exc: LlamaserveError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="llamaserve"'}
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def _install_security(app: FastAPI, settings: Settings) -> None:
    """API keys and the body limit (server/api/security.py); the UI's own files stay public."""
    app.add_middleware(
        SecurityMiddleware,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        render_error=_error_response,
        public_paths=ui_public_paths(WEB_DIR),
    )


REQUEST_ID_HEADER = "X-Request-Id"
# A client's id goes into our logs and headers, so only a plain token of sane length is honoured.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestContextMiddleware:
    """Gives each HTTP request an id (the client's ``X-Request-Id`` if it sent a sane one), puts it in
    the log context and on the response, and counts the response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = sent if _CLIENT_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # for the 500 handler, which runs outside
        status = 500  # what the outermost error middleware answers if the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            self.metrics.record_http_request(_endpoint_label(scope), status)


def _endpoint_label(scope: Scope) -> str:
    """The route template, never the raw path, so the label set stays small.

    "/" is the web UI mount (and unknown paths); "unrouted" a request refused before routing (401, 413).
    """
    route = scope.get("route")
    return (getattr(route, "path_format", "") or "/") if route is not None else "unrouted"


def _count_rejection(request: Request, exc: LlamaserveError) -> None:
    # queue_full is counted by the scheduler, which is where that refusal happens.
    if isinstance(exc, InvalidRequestError):
        reason = "context_overflow" if isinstance(exc, ContextLengthExceededError) else "invalid"
        state: AppState = request.app.state.llamaserve
        state.metrics.record_rejected(reason)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_llamaserve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LlamaserveError)
        _count_rejection(request, exc)
        return _error_response(exc)

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
        return _error_response(err)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        err = LlamaserveError(str(exc.detail))
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error"
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if exc.status_code == 404:
            err.message = f"Unknown route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            err.message = f"Method {request.method} is not allowed on {request.url.path}"
        return _error_response(err)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside the middlewares, after they left: bring the request id back.
        request_id = request.scope.get("state", {}).get("request_id")
        request_id_var.set(request_id)
        log.exception("unhandled error on %s", request.url.path)
        response = _error_response(LlamaserveError("The server had an internal error."))
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    app.add_exception_handler(LlamaserveError, on_llamaserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# The UI has no inline script or style and talks only to this server, so the policy can be strict:
# even markup that slipped past the Markdown renderer's escaping could not run or load anything.
WEB_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebFiles(StaticFiles):
    """web/: revalidated on every load (no-cache + the ETag StaticFiles sets), so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        # Mounted at "/", this sees every request that no API route fully matched. Keep the API's own
        # answers there: 405 for a wrong method on an API path, 404 for a POST to an unknown one.
        if any(route.matches(scope)[0] is Match.PARTIAL for route in scope["router"].routes):
            raise StarletteHTTPException(status_code=405)
        if scope["method"] not in ("GET", "HEAD"):
            raise StarletteHTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(WEB_HEADERS)
        return response
