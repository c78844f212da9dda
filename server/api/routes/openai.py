"""/v1/* handlers: translate service results to HTTP (JSON, SSE) and nothing more."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

from server.api.state import AppState
from server.errors import LlamaserveError, ServiceUnavailableError
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
from server.runtime.scheduler import RequestHandle
from server.services.chat import ChatService

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

# Comments sent while a stream waits (in the queue, or on a long prefill) keep proxies from
# closing an idle connection.
KEEPALIVE_SECONDS = 10

T = TypeVar("T", bound=BaseModel)


def service_of(request: Request) -> ChatService:
    state: AppState = request.app.state.llamaserve
    if state.status != "ok" or state.service is None:
        reason = "is shutting down" if state.status == "draining" else "is loading the model"
        raise ServiceUnavailableError(f"The server {reason}; try again shortly.")
    return state.service


async def service_for(request: Request, model: str | None) -> ChatService:
    """The service of the requested model: routed by name, and loaded first if need be, when the
    server holds several models (server/services/registry.py); otherwise the one model's service."""
    state: AppState = request.app.state.llamaserve
    if state.registry is None:
        return service_of(request)
    if state.status == "draining":
        raise ServiceUnavailableError("The server is shutting down; try again shortly.")
    return await state.registry.service(model)


def request_id_of(request: Request, prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    state: AppState = request.app.state.llamaserve
    return state.registry.list_models() if state.registry is not None else service_of(request).list_models()


@router.get("/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> Model:
    state: AppState = request.app.state.llamaserve
    if state.registry is not None:
        return state.registry.model(model_id)
    service = service_of(request)
    service.check_model(model_id)
    return service.list_models().data[0]


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = await service_for(request, body.model)
    request_id = request_id_of(request, "chatcmpl")
    handles = service.submit(service.prepare_chat(body, request_id))
    if body.stream:
        return _event_stream(service.stream_chat(body, handles, request_id))
    return await _unless_disconnected(request, service.complete_chat(body, handles, request_id), handles)


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request) -> Any:
    service = (await service_for(request, body.model)).completions
    request_id = request_id_of(request, "cmpl")
    plan = service.prepare(body, request_id)
    handles = service.submit(plan.requests)
    if body.stream:
        return _event_stream(service.stream(body, plan, handles, request_id))
    return await _unless_disconnected(request, service.complete(body, plan, handles, request_id), handles)


@router.post("/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    return await (await service_for(request, body.model)).embeddings.create(body)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


async def _unless_disconnected(
    request: Request, work: Awaitable[T], handles: Sequence[RequestHandle]
) -> T | JSONResponse:
    """Await ``work``; a client that leaves meanwhile gets its slots freed at once."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)
    watch = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            for h in handles:
                h.cancel()
    if task.cancelled():
        # Nobody reads this; the status is what logs and metrics see.
        return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)
    return task.result()


def _event_stream(chunks: AsyncIterator[dict[str, object]]) -> EventSourceResponse:
    return EventSourceResponse(_sse(chunks), ping=KEEPALIVE_SECONDS, sep="\n")


async def _sse(chunks: AsyncIterator[dict[str, object]]) -> AsyncIterator[dict[str, str]]:
    error: LlamaserveError | None = None
    try:
        async for chunk in chunks:
            yield {"data": json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))}
    except LlamaserveError as exc:
        error = exc
    except Exception:
        log.exception("a stream failed after it started")
        error = LlamaserveError("The server had an internal error.")
    if error is not None:
        # Headers are gone: the error travels as an SSE event in OpenAI's error shape (the openai
        # SDK raises APIError for a data line with an "error" key), then the stream closes.
        yield {"event": "error", "data": json.dumps(error.to_dict())}
        return
    yield {"data": "[DONE]"}
