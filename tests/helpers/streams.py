"""Reading a scheduler request's events to the end, as the services do."""

from __future__ import annotations

from server.runtime.events import ErrorEvent, FinishEvent, TokenEvent
from server.runtime.scheduler import RequestHandle


async def collect(handle: RequestHandle, tokens: list[int] | None = None) -> tuple[str, FinishEvent | ErrorEvent]:
    """The request's text and its final event; each token id goes to ``tokens`` when given."""
    text = ""
    async for ev in handle.events():
        if isinstance(ev, TokenEvent):
            text += ev.text
            if tokens is not None:
                tokens.append(ev.token)
        elif isinstance(ev, FinishEvent | ErrorEvent):
            return text + (ev.text if isinstance(ev, FinishEvent) else ""), ev
    raise AssertionError("no final event")
