"""A request's asyncio side, and the outbox that carries the engine thread's events to it.

The engine thread never touches an asyncio object. What a step produces for every slot
(tokens, finishes, errors, "admitted") is gathered in an :class:`Outbox` and handed to the
event loop with ONE ``loop.call_soon_threadsafe`` per step, not one per token per slot:
each such call takes the loop's lock and writes to its self-pipe to wake it, which at eight
streams was eight wake-ups per step for what is one batch of news.

And not even once per step while the loop has not yet handed out the last batch: a step's events
go into the loop's :class:`_Mailbox`, and only a batch that finds no delivery pending wakes the
loop. The others ride on the wake-up already under way, so a loop that falls behind (many streams,
a busy machine) is not woken again for news it will read anyway; the engine thread spares the
write and the thread switch it forces (py-spy put that write at 6% of the samples at one stream).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

from server.runtime.events import ErrorEvent, Event, FinishEvent

log = logging.getLogger(__name__)


class RequestHandle:
    """The asyncio side of one request: iterate :meth:`events`, or :meth:`cancel` it."""

    def __init__(self, seq_id: int, loop: asyncio.AbstractEventLoop, cancel: Callable[[int], None]) -> None:
        self.seq_id = seq_id
        self.loop = loop
        self._cancel = cancel
        # One reader, one writer, both on the loop: a deque and the reader's future is all a
        # stream needs per token (asyncio.Queue's bookkeeping ran a dozen calls for each).
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.admitted = asyncio.Event()

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._cancel(self.seq_id)

    async def events(self) -> AsyncIterator[Event]:
        """Yield events until the request finishes; leaving early cancels it."""
        events = self._events
        try:
            while True:
                if not events:
                    self._waiter = self.loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                event = events.popleft()
                yield event
                if isinstance(event, FinishEvent | ErrorEvent):
                    self.done = True
                    return
        finally:
            self.cancel()

    def put(self, event: Event) -> None:
        """On the loop: the next event for :meth:`events`."""
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# What the outbox carries for one handle: an event, or None for "took a slot".
_Item = tuple[RequestHandle, Event | None]


def _deliver(items: list[_Item]) -> None:
    """On the event loop: hand each event to its request, in the order the engine made them."""
    for handle, event in items:
        if event is None:
            handle.admitted.set()
        else:
            handle.put(event)


class _Mailbox:
    """One event loop's undelivered events: the engine thread posts batches, the loop takes them all.

    ``pending`` is True from the post that schedules :meth:`_drain` until a drain finds nothing
    left; while it is, a ``_drain`` is scheduled on the loop, so a post need not wake it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[_Item] = []
        self._pending = False

    def post(self, batch: list[_Item]) -> bool:
        """Engine thread: queue ``batch``; True when it had to wake the loop."""
        with self._lock:
            self._items += batch
            if self._pending:
                return False
            self._pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            # The loop is closed: nobody is left to read these events.
            with self._lock:
                log.debug("dropped %d events for a closed event loop", len(self._items))
                self._items = []
        return True

    def _drain(self) -> None:
        """On the loop: deliver what is there, then look again in the next iteration, without a wake-up."""
        with self._lock:
            items, self._items = self._items, []
            if not items:
                self._pending = False
                return
        _deliver(items)
        # What the engine posts while the readers of these events run is taken by this next look.
        self.loop.call_soon(self._drain)


class Outbox:
    """Events the engine thread made since the last :meth:`flush`; engine thread only."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}

    def push(self, handle: RequestHandle, event: Event) -> None:
        self._items.append((handle, event))

    def admitted(self, handle: RequestHandle) -> None:
        self._items.append((handle, None))

    def flush(self) -> int:
        """Send everything to the event loop(s), one batch per loop; returns how many loops it woke."""
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
        woken = 0
        for target, batch in batches.items():
            if target.is_closed():  # nobody is left to read these events (nor its mailbox's)
                log.debug("dropped %d events for a closed event loop", len(batch))
                self._mailboxes.pop(target, None)
                continue
            box = self._mailboxes.get(target)
            if box is None:
                # Tests build a loop per case: forget closed ones so their mailboxes do not pile up.
                self._mailboxes = {lp: b for lp, b in self._mailboxes.items() if not lp.is_closed()}
                box = self._mailboxes[target] = _Mailbox(target)
            woken += box.post(batch)
        return woken
