"""A service's :class:`~server.services.pipeline.Generation` -> HTTP: JSON, or Server-Sent Events.

A client that leaves cancels its request end to end: a JSON response is abandoned as soon as
the disconnect is seen, a stream when its next chunk cannot be written; either way every
choice's handle is cancelled and the scheduler frees the slots at its next step.

Two framings: OpenAI's (``data:`` lines, ``data: [DONE]`` at the end) and Anthropic's (every
event named, ``event: <type>`` over its ``data:``, nothing after ``message_stop``). An error after
the stream started is an ``error`` event in the route family's error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from server.api.error_handlers import ANTHROPIC_PREFIXES, error_body
from server.errors import LlamaserveError
from server.services.pipeline import Generation, StreamComment, StreamItem

log = logging.getLogger(__name__)

# Comments sent while a stream waits (in the queue, or on a long prefill) keep proxies from
# closing an idle connection.
KEEPALIVE_SECONDS = 10
DISCONNECT_POLL_SECONDS = 0.05

T = TypeVar("T")
Framing = Callable[[AsyncIterator[StreamItem]], AsyncIterator[dict[str, str]]]


async def respond(
    request: Request, generation: Generation[T], *, framing: Framing | None = None
) -> T | EventSourceResponse | JSONResponse:
    if generation.streaming:
        events = (framing or openai_events)(generation.chunks())
        return EventSourceResponse(events, ping=KEEPALIVE_SECONDS, sep="\n")
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


def _dumps(value: object) -> str:
    # Serialised once, straight to the data line.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def _until_error(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem | LlamaserveError]:
    """The chunks, then the error that ended them, if one did (the headers are gone by then)."""
    try:
        async for chunk in chunks:
            yield chunk
    except LlamaserveError as exc:
        yield exc
    except Exception:
        log.exception("a stream failed after it started")
        yield LlamaserveError("The server had an internal error.")


async def openai_events(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[dict[str, str]]:
    async for item in _until_error(chunks):
        if isinstance(item, StreamComment):  # our include_progress extension: clients skip comments
            yield {"comment": item.text}
            continue
        if isinstance(item, LlamaserveError):
            # The openai SDK raises APIError for a data line with an "error" key; then the stream closes.
            yield {"event": "error", "data": json.dumps(error_body(item, "/v1"))}
            return
        yield {"data": _dumps(item)}
    yield {"data": "[DONE]"}


async def anthropic_events(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[dict[str, str]]:
    """Each chunk is one event whose ``type`` names it; the anthropic SDK skips unnamed events."""
    async for item in _until_error(chunks):
        if isinstance(item, StreamComment):  # never made for Messages, which has no include_progress
            continue
        if isinstance(item, LlamaserveError):
            yield {"event": "error", "data": _dumps(error_body(item, ANTHROPIC_PREFIXES[0]))}
            return
        yield {"event": str(item["type"]), "data": _dumps(item)}
