"""/v1/* handlers: find the model, call its service once, translate the result to HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.api.routes.models import app_state, caller_of, check_serving, model_for, new_request_id
from server.api.streaming import respond
from server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
)

router = APIRouter(prefix="/v1")


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    state = app_state(request)
    check_serving(state)
    return state.registry.list_models()


@router.get("/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> Model:
    state = app_state(request)
    check_serving(state)
    return state.registry.model(model_id)


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    model = await model_for(request, body.model)
    return await respond(request, await model.chat.start(body, new_request_id("chatcmpl"), caller_of(request)))


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request) -> Any:
    model = await model_for(request, body.model)
    return await respond(request, await model.completions.start(body, new_request_id("cmpl"), caller_of(request)))


@router.post("/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    return await (await model_for(request, body.model)).embeddings.create(body)
