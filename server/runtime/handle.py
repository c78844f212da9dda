"""A request's asyncio side, and the outbox that carries the engine thread's events to it.

The engine thread never touches an asyncio object. What a step produces for every slot
(tokens, finishes, errors, "admitted") is gathered in an :class:`Outbox` and handed to the
event loop with ONE ``loop.call_soon_threadsafe`` per step, not one per token per slot:
each such call takes the loop's lock and writes to its self-pipe to wake it, which at eight
streams was eight wake-ups per step for what is one batch of news.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from server.runtime.events import ErrorEvent, Event, FinishEvent

log = logging.getLogger(__name__)


class RequestHandle:
    """The asyncio side of one request: iterate :meth:`events`, or :meth:`cancel` it."""

    def __init__(self, seq_id: int, loop: asyncio.AbstractEventLoop, cancel: Callable[[int], None]) -> None:
        self.seq_id = seq_id
        self.loop = loop
        self._cancel = cancel
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.done = False
        self.admitted = asyncio.Event()

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._cancel(self.seq_id)

    async def events(self) -> AsyncIterator[Event]:
        """Yield events until the request finishes; leaving early cancels it."""
        try:
            while True:
                event = await self._queue.get()
                yield event
                if isinstance(event, FinishEvent | ErrorEvent):
                    self.done = True
                    return
        finally:
            self.cancel()


# What the outbox carries for one handle: an event, or None for "took a slot".
_Item = tuple[RequestHandle, Event | None]


def _deliver(items: list[_Item]) -> None:
    """On the event loop: hand each event to its request, in the order the engine made them."""
    for handle, event in items:
        if event is None:
            handle.admitted.set()
        else:
            handle._queue.put_nowait(event)


class Outbox:
    """Events the engine thread made since the last :meth:`flush`; engine thread only."""

    def __init__(self) -> None:
        self._items: list[_Item] = []

    def push(self, handle: RequestHandle, event: Event) -> None:
        self._items.append((handle, event))

    def admitted(self, handle: RequestHandle) -> None:
        self._items.append((handle, None))

    def flush(self) -> int:
        """Send everything to the event loop(s), one call per loop; returns how many calls it made."""
        items, self._items = self._items, []
        if not items:
            return 0
        loop = items[0][0].loop
        if all(h.loop is loop for h, _ in items):
            batches = {loop: items}
        else:  # several loops (tests that build one per case): each gets its own requests' events
            batches = {}
            for item in items:
                batches.setdefault(item[0].loop, []).append(item)
        for target, batch in batches.items():
            try:
                target.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:
                # The loop is closed: nobody is left to read these events.
                log.debug("dropped %d events for a closed event loop", len(batch))
        return len(batches)
