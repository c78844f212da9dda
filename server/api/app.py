"""The one composition root: ``create_app`` wires settings, engines, schedulers, services and routes.

Every model, one or several, is served through one :class:`~server.services.registry.ModelRegistry`:
the lifespan starts it (loading off the event loop, so ``/health`` answers 503 meanwhile) and
closes it, which stops every scheduler and frees every engine the app owns. The lifespan also
opens the response store (``app.state.llamaserve.responses``) and closes it last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.api.cors import LenientPreflightCORSMiddleware, cors_options
from server.api.engines import EngineFactory, EngineSource, engine_source
from server.api.error_handlers import install_error_handlers, render_error
from server.api.middleware import RequestContextMiddleware
from server.api.routes import anthropic as anthropic_routes
from server.api.routes import at_root
from server.api.routes import openai as openai_routes
from server.api.routes import ops as ops_routes
from server.api.routes import templates as template_routes
from server.api.routes import tokens as token_routes
from server.api.security import SecurityMiddleware, key_id, ui_public_paths
from server.api.state import AppState, AppStatus
from server.api.web import PAGES, WEB_DIR, WebFiles, page
from server.engine.base import Engine
from server.ops.metrics import Metrics
from server.runtime.scheduler import Scheduler
from server.services.limits import RequestLimits
from server.services.model import LoadedModel
from server.services.registry import ModelRegistry
from server.settings import Settings
from server.state import open_response_store

log = logging.getLogger(__name__)


def _serve_model(metrics: Metrics, source: EngineSource, settings: Settings, engine: Engine) -> LoadedModel:
    """One model's scheduler and services (each model of the registry gets its own)."""
    model_id = settings.alias or engine.info.id
    hooks = metrics.model(model_id)
    hooks.set_model(engine.info)
    scheduler = Scheduler(
        engine,
        max_queue=settings.max_queue,
        hooks=hooks,
        request_timeout=settings.request_timeout,
        max_queue_per_key=settings.max_queue_per_key,
        key_weights={key_id(k.key): k.weight for k in settings.keys},
    )
    hooks.watch(scheduler)
    hooks.watch_cache(engine.cache_stats)
    scheduler.start()
    return LoadedModel.serve(
        model_id,
        engine,
        scheduler,
        limits=RequestLimits.from_settings(settings),
        chat_template=settings.chat_template,
        named_templates=source.named_templates,
        reasoning_format=settings.reasoning_format,
        pooling=settings.pooling,
        close_engine=source.owns_engines,
        on_close=hooks.forget,  # an unloaded model's gauges leave /metrics; its counters stay
    )


def _registry(settings: Settings, source: EngineSource, metrics: Metrics) -> ModelRegistry:
    models = settings.model_settings()
    if source.default_id is not None:
        models = [m if m.alias else m.model_copy(update={"alias": source.default_id}) for m in models]
    registry = ModelRegistry(
        models,
        load=source.load,
        serve=lambda s, engine: _serve_model(metrics, source, s, engine),
        max_loaded=settings.max_loaded_models,
        idle_unload=settings.idle_unload,
        strict_names=settings.strict_model_name,
        fallback=settings.default_model,
    )
    for model_id in registry.ids:
        metrics.model(model_id)  # its counters at 0 before its first load, so rate() sees the first event
    return registry


async def _start(state: AppState) -> None:
    try:
        await state.registry.start()
    except Exception as exc:
        log.exception("the model failed to load")
        state.status = AppStatus.ERROR
        state.load_error = str(exc)
        return
    state.status = AppStatus.OK


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """Build the app. Give ``engine`` (a fake, in tests; the app does not close it), or
    ``engine_factory``, or let the lifespan load llama.cpp."""
    settings = settings or Settings()
    metrics = Metrics()
    source = engine_source(engine, engine_factory)
    state = AppState(settings, _registry(settings, source, metrics), metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each run of the app (tests run one app several times) serves from a fresh registry.
        state.registry = _registry(settings, source, metrics)
        state.status, state.load_error = AppStatus.LOADING, None
        # Opened per run, like the registry: a restart of the app rereads the file (and :memory: starts empty).
        state.responses = await asyncio.to_thread(open_response_store, settings)
        metrics.stored_responses.watch(state.responses)
        loader = asyncio.create_task(_start(state))
        if engine is not None:
            await loader  # nothing to load: serve from the first request on
        try:
            yield
        finally:
            state.status = AppStatus.DRAINING
            loader.cancel()
            await state.registry.close()
            metrics.stored_responses.watch(None)
            state.responses.close()

    app = FastAPI(title="llamaserve", version=__version__, lifespan=lifespan)
    app.state.llamaserve = state
    app.add_middleware(
        SecurityMiddleware,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        render_error=render_error,
        # The UI's own files stay public; /metrics too when asked (a scraper with no key).
        public_paths=ui_public_paths(WEB_DIR) | set(PAGES) | ({"/metrics"} if settings.metrics_public else set()),
        key_priorities={key_id(k.key): k.priority for k in settings.keys},
    )
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    if settings.cors_origins:
        # Outermost, so that preflights are answered before the key check and 401s carry CORS headers.
        app.add_middleware(LenientPreflightCORSMiddleware, **cors_options(settings))
    install_error_handlers(app)
    for routes in (openai_routes, anthropic_routes, ops_routes, template_routes, token_routes):
        app.include_router(routes.router)
    for routes in (openai_routes, anthropic_routes):
        app.include_router(at_root(routes.router))  # /chat/completions as /v1/chat/completions
    # Mounted last: every API route above wins over a file of the same name.
    if WEB_DIR.is_dir():
        for path in PAGES:
            app.add_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
        app.mount("/", WebFiles(directory=WEB_DIR, html=True), name="web")
    else:
        # A wheel install carries server/ only; the API still works, so say why "/" is a 404.
        log.warning("web UI files not found at %s; serving the API only", WEB_DIR)
    return app
