"""Operational endpoints: /health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.state import AppState

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state: AppState = request.app.state.llamaserve
    body: dict[str, object] = {"status": state.status}
    if state.scheduler is not None:
        body["slots_total"] = state.scheduler.n_slots
        body["slots_busy"] = state.scheduler.busy
        body["requests_waiting"] = state.scheduler.waiting
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=200 if state.status == "ok" else 503)
