"""Operational endpoints: the probes (/health, /health/ready, /health/live) and /metrics.

Readiness and liveness answer different questions, as Kubernetes asks them. Readiness ("send me
traffic?") is 503 while the models load, when they failed to, and while draining. Liveness ("restart
me?") stays 200 through all of that, since a restart would only start the load or the drain over;
it is 503 only when an engine thread owes a step (requests running or queued) and has finished
none for ``--liveness-timeout`` seconds: a wedged decode that only a restart can end.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api.routes.models import app_state
from server.api.state import AppState, AppStatus

router = APIRouter()


@router.get("/health")
@router.get("/health/ready")
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


def stalled_engines(state: AppState, now: float) -> dict[str, float]:
    """Loaded models whose engine owes a step and has finished none for too long: id -> seconds quiet."""
    timeout = state.settings.liveness_timeout
    stalled: dict[str, float] = {}
    if timeout <= 0:
        return stalled
    for model_id in state.registry.loaded_ids():
        loaded = state.registry.loaded(model_id)
        if loaded is None:  # unloaded between the two calls
            continue
        quiet = now - loaded.scheduler.last_step_finished
        if loaded.scheduler.has_work and quiet > timeout:
            stalled[model_id] = round(quiet, 1)
    return stalled


@router.get("/health/live")
async def live(request: Request) -> JSONResponse:
    state = app_state(request)
    stalled = stalled_engines(state, time.monotonic())
    if stalled:
        return JSONResponse({"status": "stuck", "state": state.status.value, "stalled_seconds": stalled}, 503)
    return JSONResponse({"status": "alive", "state": state.status.value})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; OpenMetrics when the scraper's Accept header asks for it."""
    body, content_type = app_state(request).metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
