"""A service's :class:`~server.services.pipeline.Generation` -> HTTP: JSON, or Server-Sent Events.

A client that leaves cancels its request end to end: a JSON response is abandoned as soon as
the disconnect is seen, a stream when its next chunk cannot be written; either way every
choice's handle is cancelled and the scheduler frees the slots at its next step.

Three framings: OpenAI's (``data:`` lines, ``data: [DONE]`` at the end), Anthropic's (every
event named, ``event: <type>`` over its ``data:``, nothing after ``message_stop``), and OpenAI's
Responses (named like Anthropic's, nothing after the terminal event). An error after the stream
started is an ``error`` event in the route family's error shape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from server.api.error_handlers import ANTHROPIC_PREFIXES, error_body
from server.api.sse import EventStream
from server.errors import LlamaserveError
from server.services.encoded_chunks import dumps as _dumps
from server.services.pipeline import EncodedChunk, Generation, StreamComment, StreamItem

log = logging.getLogger(__name__)

# Comments sent while a stream waits (in the queue, or on a long prefill) keep proxies from
# closing an idle connection.
KEEPALIVE_SECONDS = 10
DISCONNECT_POLL_SECONDS = 0.05

T = TypeVar("T")
Framing = Callable[[AsyncIterator[StreamItem]], AsyncIterator[bytes]]


async def respond(
    request: Request, generation: Generation[T], *, framing: Framing | None = None
) -> T | EventStream | JSONResponse:
    if generation.streaming:
        return EventStream((framing or openai_events)(generation.chunks()), ping_seconds=KEEPALIVE_SECONDS)
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


def _data(json_text: str) -> bytes:
    # One event per JSON text; json.dumps never writes a raw newline, so one data line holds it.
    return b"data: " + json_text.encode() + b"\n\n"


def _named(name: str, json_text: str) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json_text.encode() + b"\n\n"


def _comment(text: str) -> bytes:
    return b"".join(b": " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


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


async def openai_events(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[bytes]:
    async for item in _until_error(chunks):
        if isinstance(item, StreamComment):  # our include_progress extension: clients skip comments
            yield _comment(item.text)
            continue
        if isinstance(item, LlamaserveError):
            # The openai SDK raises APIError for a data line with an "error" key; then the stream closes.
            yield _named("error", _dumps(error_body(item, "/v1")))
            return
        yield _data(item.json if isinstance(item, EncodedChunk) else _dumps(item))
    yield b"data: [DONE]\n\n"


async def anthropic_events(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[bytes]:
    """Each chunk is one event whose ``type`` names it; the anthropic SDK skips unnamed events."""
    async for item in _until_error(chunks):
        if isinstance(item, StreamComment):  # never made for Messages, which has no include_progress
            continue
        if isinstance(item, LlamaserveError):
            yield _named("error", _dumps(error_body(item, ANTHROPIC_PREFIXES[0])))
            return
        if isinstance(item, EncodedChunk):
            yield _named(item.event or "", item.json)
            continue
        yield _named(str(item["type"]), _dumps(item))


async def responses_events(chunks: AsyncIterator[StreamItem]) -> AsyncIterator[bytes]:
    """Each chunk is one named event; the service reports generation errors in-band itself, so what
    arrives here (a failed store write, a bug) becomes the Responses ``error`` event and ends it."""
    sequence = 0
    async for item in _until_error(chunks):
        if isinstance(item, StreamComment | EncodedChunk):  # never made for Responses: no progress, no fast path
            continue
        if isinstance(item, LlamaserveError):
            error = {"type": "error", "code": item.code, "message": item.message, "param": item.param}
            yield _named("error", _dumps({**error, "sequence_number": sequence}))
            return
        sequence = int(str(item["sequence_number"])) + 1
        yield _named(str(item["type"]), _dumps(item))
