"""/v1/* handlers."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from server.errors import LlamaserveError, ServiceUnavailableError
from server.protocol import ChatCompletion, ChatCompletionRequest, Model, ModelList
from server.service import ChatService
from server.state import AppState

router = APIRouter(prefix="/v1")

# Comments sent while a stream waits (in the queue, or on a long prefill) keep proxies from
# closing an idle connection.
KEEPALIVE_SECONDS = 10


def service_of(request: Request) -> ChatService:
    state: AppState = request.app.state.llamaserve
    if state.status != "ok" or state.service is None:
        reason = "is shutting down" if state.status == "draining" else "is loading the model"
        raise ServiceUnavailableError(f"The server {reason}; try again shortly.")
    return state.service


def request_id_of(request: Request, prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return service_of(request).list_models()


@router.get("/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> Model:
    service = service_of(request)
    service.check_model(model_id)
    return service.list_models().data[0]


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = service_of(request)
    request_id = request_id_of(request, "chatcmpl")
    gen_requests = service.prepare_chat(body, request_id)
    handles = service.submit(gen_requests)
    if body.stream:
        return EventSourceResponse(
            _sse(service.stream_chat(body, handles, request_id)), ping=KEEPALIVE_SECONDS, sep="\n"
        )
    # A client that leaves while we generate must free its slots: watch for the disconnect.
    work = asyncio.create_task(service.complete_chat(body, handles, request_id))
    watch = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            for h in handles:
                h.cancel()
    if work.cancelled():
        return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)
    return work.result()


async def _sse(chunks: AsyncIterator[dict[str, object]]) -> AsyncIterator[dict[str, str]]:
    try:
        async for chunk in chunks:
            yield {"data": json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))}
    except LlamaserveError as exc:
        # Headers are gone: the error travels as an SSE event, then the stream closes.
        yield {"event": "error", "data": json.dumps(exc.to_dict())}
        return
    yield {"data": "[DONE]"}
