"""OpenAI's Responses API: ``/v1/responses`` (create), ``/v1/responses/{id}`` (retrieve, delete),
``/v1/responses/{id}/input_items``, ``/v1/responses/{id}/cancel`` and ``/v1/responses/input_tokens``.

A create needs its model; the stored responses are the app's store (``AppState.responses``) and need
none. Each caller sees only its own API key's responses: another key's read as absent (404).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Response as HTTPResponse

from server.api.routes.models import app_state, caller_of, model_for
from server.api.streaming import respond, responses_events
from server.errors import UnsupportedFieldError
from server.protocol.responses import (
    INCLUDABLE,
    InputTokens,
    InputTokensRequest,
    Response,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseItemList,
)
from server.services import responses as service
from server.state import ResponseStore

router = APIRouter(prefix="/v1")

# Tells the client how many of the oldest input items ``truncation: "auto"`` left out.
TRUNCATED_HEADER = "x-llamaserve-truncated-items"


def _store(request: Request) -> ResponseStore | None:
    return app_state(request).responses  # None only outside the app's lifespan


def _check_include(include: list[str] | None) -> None:
    for name in include or []:
        if name not in INCLUDABLE:
            raise UnsupportedFieldError("include", f"cannot include {name!r} here; only {sorted(INCLUDABLE)}")


@router.post("/responses", response_model=Response)
async def create_response(body: ResponseCreateRequest, request: Request, http: HTTPResponse) -> Any:
    model = await model_for(request, body.model)
    response_id = f"resp_{secrets.token_hex(24)}"
    generation = await model.responses.start(body, response_id, caller_of(request), _store(request))
    out = await respond(request, generation, framing=responses_events)
    dropped = generation.prepared.dropped
    if dropped:
        (out if isinstance(out, HTTPResponse) else http).headers[TRUNCATED_HEADER] = str(dropped)
    return out


@router.post("/responses/input_tokens", response_model=InputTokens)
async def count_input_tokens(body: InputTokensRequest, request: Request) -> InputTokens:
    model = await model_for(request, body.model)
    return await model.responses.input_tokens(body, caller_of(request), _store(request))


@router.get("/responses/{response_id}", response_model=Response)
async def retrieve_response(
    response_id: str,
    request: Request,
    include: Annotated[list[str] | None, Query()] = None,
    stream: bool = False,
    starting_after: int | None = None,
) -> Any:
    _check_include(include)
    if stream or starting_after is not None:
        raise UnsupportedFieldError("stream", "is not supported on retrieve: a stored response is not replayed")
    return await service.retrieve(_store(request), response_id, caller_of(request))


@router.delete("/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> ResponseDeleted:
    return await service.delete(_store(request), response_id, caller_of(request))


@router.post("/responses/{response_id}/cancel", response_model=Response)
async def cancel_response(response_id: str, request: Request) -> Any:
    await service.cancel(_store(request), response_id, caller_of(request))


@router.get("/responses/{response_id}/input_items", response_model=ResponseItemList)
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query()] = None,
) -> ResponseItemList:
    _check_include(include)
    return await service.input_items(
        _store(request), response_id, caller_of(request), after=after, limit=limit, order=order
    )
