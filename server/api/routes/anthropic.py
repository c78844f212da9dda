"""Anthropic's Messages API: ``/v1/messages`` (``?beta=true`` too: the query is not part of the route)
and ``/v1/messages/count_tokens``. Errors here have Anthropic's shape (:mod:`server.api.error_handlers`);
``anthropic-version`` and ``anthropic-beta`` headers are accepted whatever their value.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.api.routes.models import caller_of, model_for, new_request_id
from server.api.streaming import anthropic_events, respond
from server.protocol.anthropic import Message, MessageCreateRequest, MessagesInput, MessageTokensCount

router = APIRouter(prefix="/v1")


@router.post("/messages", response_model=Message)
async def create_message(body: MessageCreateRequest, request: Request) -> Any:
    model = await model_for(request, body.model)
    generation = await model.messages.start(body, new_request_id("msg").replace("-", "_"), caller_of(request))
    return await respond(request, generation, framing=anthropic_events)


@router.post("/messages/count_tokens", response_model=MessageTokensCount)
async def count_tokens(body: MessagesInput, request: Request) -> MessageTokensCount:
    return await (await model_for(request, body.model)).messages.count_tokens(body)
