"""A service's :class:`~server.services.pipeline.Generation` -> HTTP: JSON, or Server-Sent Events.

A client that leaves cancels its request end to end: a JSON response is abandoned as soon as
the disconnect is seen, a stream when its next chunk cannot be written; either way every
choice's handle is cancelled and the scheduler frees the slots at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from server.errors import LlamaserveError
from server.services.pipeline import Chunk, Generation

log = logging.getLogger(__name__)

# Comments sent while a stream waits (in the queue, or on a long prefill) keep proxies from
# closing an idle connection.
KEEPALIVE_SECONDS = 10
DISCONNECT_POLL_SECONDS = 0.05

T = TypeVar("T")


async def respond(request: Request, generation: Generation[T]) -> T | EventSourceResponse | JSONResponse:
    if generation.streaming:
        return EventSourceResponse(_sse(generation.chunks()), ping=KEEPALIVE_SECONDS, sep="\n")
    return await _unless_disconnected(request, generation)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


async def _unless_disconnected(request: Request, generation: Generation[T]) -> T | JSONResponse:
    """Await the response; a client that leaves meanwhile gets its slots freed at once."""
    task: asyncio.Task[Any] = asyncio.ensure_future(generation.response())
    watch = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            # Cancelling the task closes the pipeline's event iterator, which cancels every choice.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        # Nobody reads this; the status is what logs and metrics see.
        return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)
    result: T = task.result()
    return result


async def _sse(chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict[str, str]]:
    error: LlamaserveError | None = None
    try:
        async for chunk in chunks:
            # Serialised once, straight to the data line.
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
