"""Operational endpoints: /health, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api.state import AppState

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state: AppState = request.app.state.llamaserve
    body: dict[str, object] = {"status": state.status}
    if state.scheduler is not None:
        body["slots_total"] = state.scheduler.n_slots
        body["slots_busy"] = state.scheduler.busy
        body["requests_waiting"] = state.scheduler.waiting
    if state.engine is not None:
        # The web UI shows "tokens used / context" per conversation.
        body["n_ctx_per_seq"] = state.engine.info.n_ctx_per_seq
    if state.registry is not None:
        # Several models: the fields above are the first model's; these say what is loaded now.
        body["models"] = state.registry.ids
        body["models_loaded"] = state.registry.loaded_ids()
        body["requests_waiting"] = state.registry.waiting
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=200 if state.status == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; OpenMetrics when the scraper's Accept header asks for it."""
    state: AppState = request.app.state.llamaserve
    body, content_type = state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
