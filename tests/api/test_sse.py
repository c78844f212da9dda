"""The SSE response every stream goes out through (server.api.sse.EventStream), driven as ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from server.api.sse import PING, EventStream


class Client:
    """An ASGI server's side of one response: what was sent, and a disconnect to trigger."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _serve(response: EventStream, client: Client) -> None:
    await response({"type": "http"}, client.receive, client.send)


def test_events_go_out_as_framed_and_the_response_ends_with_the_stream() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"event: x\ndata: 2\n\n"

    client = Client()
    asyncio.run(_serve(EventStream(events(), ping_seconds=10), client))
    start = client.sent[0]
    headers = dict(start["headers"])
    assert start["status"] == 200 and headers[b"content-type"].startswith(b"text/event-stream")
    assert b"content-length" not in headers  # a stream has no length: a client would stop reading at 0
    assert [m.get("body") for m in client.sent[1:]] == [b"data: 1\n\n", b"event: x\ndata: 2\n\n", b""]
    assert client.sent[-1]["more_body"] is False


def test_a_silent_stream_sends_keepalive_comments_so_proxies_keep_the_connection() -> None:
    async def slow() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.35)  # a long prefill, say
        yield b"data: late\n\n"

    client = Client()
    asyncio.run(_serve(EventStream(slow(), ping_seconds=0.1), client))
    assert client.body.count(PING) >= 2
    assert client.body.endswith(b"data: late\n\n")


def test_a_client_that_leaves_while_nothing_is_sent_has_its_request_cancelled() -> None:
    # A request waiting in the queue writes nothing: only the disconnect can end it.
    closed = asyncio.Event()

    async def waiting() -> AsyncIterator[bytes]:
        try:
            await asyncio.sleep(3600)
            yield b"never"
        finally:
            closed.set()  # where the route's handles are cancelled

    async def scenario() -> Client:
        client = Client()
        serving = asyncio.create_task(_serve(EventStream(waiting(), ping_seconds=10), client))
        await asyncio.sleep(0.05)
        client.gone.set()
        await asyncio.wait_for(serving, 5)
        assert closed.is_set()
        return client

    client = asyncio.run(scenario())
    # Nothing is written after the client left, not even the end of the body.
    assert [m["type"] for m in client.sent] == ["http.response.start"]


def test_a_write_that_fails_because_the_client_left_ends_the_stream_quietly() -> None:
    async def events() -> AsyncIterator[bytes]:
        while True:
            yield b"data: x\n\n"
            await asyncio.sleep(0)

    class Broken(Client):
        async def send(self, message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")
            await super().send(message)

    client = Broken()
    asyncio.run(asyncio.wait_for(_serve(EventStream(events(), ping_seconds=10), client), 5))
    assert [m["type"] for m in client.sent] == ["http.response.start"]
