"""The one composition root: ``create_app`` wires settings, engine, scheduler, service and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.engine.base import Engine
from server.errors import InvalidRequestError, LlamaserveError, QueueFullError
from server.routes import openai as openai_routes
from server.routes import ops as ops_routes
from server.scheduler import Scheduler
from server.service import ChatService
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]


def load_llama_engine(settings: Settings) -> Engine:
    # Imported here so that the API layer and its tests never need llama.cpp.
    from server.engine.llama import LlamaEngine
    from server.model_files import default_model_id, resolve_model_path

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


def _start_serving(state: AppState, engine: Engine) -> None:
    scheduler = Scheduler(engine, max_queue=state.settings.max_queue)
    scheduler.start()
    state.engine = engine
    state.scheduler = scheduler
    state.service = ChatService(engine, scheduler, model_id=engine.info.id)
    state.status = "ok"


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """Build the app. Give ``engine`` (a fake, in tests) or let the lifespan load llama.cpp."""
    settings = settings or Settings()
    state = AppState(settings=settings)
    factory = engine_factory or load_llama_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if engine is not None:
            _start_serving(state, engine)
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
            if state.scheduler is not None:
                await asyncio.to_thread(state.scheduler.stop)
            if state.engine is not None and engine is None:
                state.engine.close()

    app = FastAPI(title="llamaserve", version="0.1.0", lifespan=lifespan)
    app.state.llamaserve = state
    _install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(ops_routes.router)
    return app


def _error_response(exc: LlamaserveError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_llamaserve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LlamaserveError)
        return _error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = "We could not parse the JSON body of your request."
            param = None
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
        return _error_response(InvalidRequestError(message, param=param))

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
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(LlamaserveError("The server had an internal error."))

    app.add_exception_handler(LlamaserveError, on_llamaserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


WEB_DIR = Path(__file__).resolve().parent.parent / "web"
