"""The outbox: a step's events reach the event loop in order, waking it only when no delivery is pending."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from server.engine.base import FinishReason
from server.runtime.events import FinishEvent, TokenEvent
from server.runtime.handle import Outbox, RequestHandle
from tests.helpers.wakeups import counting_wakeups


def token(i: int) -> TokenEvent:
    return TokenEvent(i, str(i), b"")


def on_engine_thread(fn: Any) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()  # blocks the loop meanwhile: it cannot drain until this test awaits


async def test_steps_posted_while_the_loop_is_busy_ride_on_one_wake_up_in_order() -> None:
    loop = asyncio.get_running_loop()
    with counting_wakeups(loop) as wakes:
        a, b = (RequestHandle(i, loop, lambda _: None) for i in (1, 2))
        outbox = Outbox()
        woke: list[int] = []

        def three_steps() -> None:
            for i in range(3):
                outbox.push(a, token(i))
                outbox.push(b, token(10 + i))
                woke.append(outbox.flush())

        on_engine_thread(three_steps)
        assert woke == [1, 0, 0] and wakes.count == 1
        a_events, b_events = a.events(), b.events()
        got = [await asyncio.wait_for(anext(a_events), 1) for _ in range(3)]
        assert [e.token for e in got if isinstance(e, TokenEvent)] == [0, 1, 2]
        got = [await asyncio.wait_for(anext(b_events), 1) for _ in range(3)]
        assert [e.token for e in got if isinstance(e, TokenEvent)] == [10, 11, 12]

        await asyncio.sleep(0.01)  # the loop has drained and looked again: the next step wakes it

        def finish() -> None:
            outbox.push(a, FinishEvent(FinishReason.STOP, "", 1, 3, 0))
            woke.append(outbox.flush())

        on_engine_thread(finish)
        assert woke[-1] == 1 and wakes.count == 2
        assert isinstance(await asyncio.wait_for(anext(a_events), 1), FinishEvent)
        await b_events.aclose()


def test_events_for_a_closed_loop_are_dropped() -> None:
    loop = asyncio.new_event_loop()
    handle = RequestHandle(1, loop, lambda _: None)
    loop.close()
    outbox = Outbox()
    outbox.push(handle, token(1))
    assert outbox.flush() == 0
