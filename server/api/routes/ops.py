"""Operational endpoints: /health, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api.routes.models import app_state
from server.api.state import AppStatus

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    registry = state.registry
    body: dict[str, object] = {"status": state.status.value}
    first = registry.loaded()
    if first is not None:
        # The first model's pool; the web UI shows "tokens used / context" per conversation.
        body["slots_total"] = first.scheduler.n_slots
        body["slots_busy"] = first.scheduler.busy
        body["n_ctx_per_seq"] = first.engine.info.n_ctx_per_seq
    body["requests_waiting"] = registry.waiting  # every model's queue, and requests waiting for a load
    body["models"] = registry.ids
    body["models_loaded"] = registry.loaded_ids()
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=200 if state.status is AppStatus.OK else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; OpenMetrics when the scraper's Accept header asks for it."""
    body, content_type = app_state(request).metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
