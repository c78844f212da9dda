"""A Server-Sent Events response that writes each already-framed event with one ASGI send.

Per token, a stream's cost on the event loop is what runs between the engine's event and the
socket write, and on a 2-core machine every microsecond of it is taken from llama.cpp's decode
threads. So the framings (:mod:`server.api.streaming`) hand over finished ``bytes``, and this
class only sends them: no per-event object, no per-send timeout scope (sse-starlette made both,
about a third of the loop's time per token).

Three tasks, the first to end cancels the others: the stream; a keepalive comment after
``ping_seconds`` without an event (proxies close idle connections, and a long prefill or a queue
wait is silent); and a watch on ``receive`` for the client's disconnect, so a request that leaves
while queued or prefilling, with nothing to write, is cancelled too (closing the event iterator
cancels its handles).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"


class EventStream(StreamingResponse):
    """``events`` framed already, each sent as it comes (Starlette's streaming headers: no length)."""

    def __init__(self, events: AsyncIterator[bytes], *, ping_seconds: float) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"},
        )
        self._events = events
        self._ping_seconds = ping_seconds
        self._last_sent = time.monotonic()
        self._gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        disconnected = False
        try:
            async with anyio.create_task_group() as tasks:

                async def first_to_end(run: Callable[[], Awaitable[None]]) -> None:
                    await run()
                    tasks.cancel_scope.cancel()

                async def watch() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    disconnected = True

                tasks.start_soon(first_to_end, lambda: self._stream(send))
                tasks.start_soon(first_to_end, lambda: self._keepalive(send))
                tasks.start_soon(first_to_end, watch)
        finally:
            # The iterator's own cleanup cancels the request's handles (a no-op when it finished).
            await self._close_events()
        if not (disconnected or self._gone):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Send) -> None:
        try:
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self._last_sent = time.monotonic()
        except OSError:
            # An ASGI server may raise on a write to a client that left (uvicorn drops it silently,
            # and the watch sees the disconnect): either way the stream is over.
            self._gone = True

    async def _keepalive(self, send: Send) -> None:
        while True:
            idle = time.monotonic() - self._last_sent
            if idle < self._ping_seconds:
                await anyio.sleep(self._ping_seconds - idle)
                continue
            await send({"type": "http.response.body", "body": PING, "more_body": True})
            self._last_sent = time.monotonic()

    async def _close_events(self) -> None:
        close = getattr(self._events, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()
