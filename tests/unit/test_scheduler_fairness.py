"""Scheduling that is fair and cheap: priority, fair share between keys, fair prefill, one wake-up a step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.engine.base import SamplingParams
from server.engine.fake import FakeEngine
from server.errors import KeyQueueFullError, QueueFullError
from server.runtime.events import GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler
from tests.helpers.wakeups import counting_wakeups


def request(prompt: str = "hi", *, priority: int = 0, key: str = "", max_tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(list(prompt.encode()), SamplingParams(), max_tokens, priority=priority, key_id=key)


async def start_order(s: Scheduler, started: list[str], handles: list[RequestHandle]) -> list[str]:
    """Run everything submitted to ``s``; the prompts in the order the engine began them."""
    s.start()
    try:
        for h in handles:
            async for _ in h.events():
                pass
    finally:
        s.stop()
    return started


def one_slot(**kwargs: Any) -> tuple[Scheduler, list[str]]:
    # One slot, not started: everything submitted waits, then runs one at a time in queue order.
    # The engine records each prompt as it begins it (the order the queue gave).
    started: list[str] = []
    engine = FakeEngine(reply=lambda p: started.append(p) or "xyz", n_slots=1)
    return Scheduler(engine, max_queue=32, **kwargs), started


async def test_lower_priority_runs_first_ties_by_arrival() -> None:
    s, started = one_slot()
    handles = [s.submit(request(name, priority=p)) for name, p in [("a", 0), ("b", 5), ("c", -2), ("d", 0)]]
    assert await start_order(s, started, handles) == ["c", "a", "d", "b"]


async def test_a_flooding_key_does_not_starve_another_key() -> None:
    s, started = one_slot()
    handles = [s.submit(request(f"flood{i}", key="flood")) for i in range(6)]
    handles += [s.submit(request(f"other{i}", key="other")) for i in range(2)]
    order = await start_order(s, started, handles)
    # FIFO would start "other" 7th and 8th; the round robin serves it every other turn.
    assert order[:4] == ["flood0", "other0", "flood1", "other1"]


async def test_key_weights_from_the_scheduler_settings() -> None:
    s, started = one_slot(key_weights={"big": 3.0})
    handles = [s.submit(request(f"{k}{i}", key=k)) for i in range(6) for k in ("big", "small")]
    first_eight = (await start_order(s, started, handles))[:8]
    assert sum(n.startswith("big") for n in first_eight) == 6


async def test_max_queue_per_key_refuses_only_that_key() -> None:
    s, _ = one_slot(max_queue_per_key=2)
    s.submit(request(key="a"))  # takes the free slot at the first step: not counted as queued
    s.submit(request(key="a"))
    s.submit(request(key="a"))
    with pytest.raises(KeyQueueFullError) as err:
        s.submit(request(key="a"))
    assert isinstance(err.value, QueueFullError) and err.value.retry_after >= 1
    s.submit(request(key="b"))  # another key still queues
    assert s.waiting_by_key() == {"a": 3, "b": 1}


async def test_events_reach_asyncio_once_per_step_for_all_slots() -> None:
    engine = FakeEngine(reply=lambda p: "x" * 40, n_slots=4, step_delay=0.001)
    s = Scheduler(engine, max_queue=8)
    with counting_wakeups(asyncio.get_running_loop()) as wakes:
        s.start()
        try:
            handles = [s.submit(request(str(i), max_tokens=40)) for i in range(4)]
            tokens = 0
            for h in handles:
                async for ev in h.events():
                    tokens += isinstance(ev, TokenEvent)
        finally:
            s.stop()
    assert tokens == 160
    # Per token per slot would be 160 calls (plus admissions and finishes); per step it is ~41.
    assert wakes.count <= engine.steps + 2
    assert wakes.count < tokens / 3


async def first_token_step(engine: FakeEngine, handle: RequestHandle) -> int:
    async for ev in handle.events():
        if isinstance(ev, TokenEvent):
            return engine.steps
    raise AssertionError("no token")


@pytest.mark.parametrize("fair", [True, False])
async def test_a_short_request_during_a_long_prefill(fair: bool) -> None:
    # 64 tokens a step: the long prompt's prefill takes 30 steps.
    engine = FakeEngine(reply=lambda p: "ok", n_slots=2, n_batch=64, n_ctx_per_seq=4096, step_delay=0.002,
                        fair_prefill=fair, prefill_min_chunk=16)  # fmt: skip
    s = Scheduler(engine, max_queue=4)
    s.start()
    try:
        long = s.submit(request("L" * 1920, max_tokens=1))
        long_first = asyncio.ensure_future(first_token_step(engine, long))
        await long.admitted.wait()
        while engine.steps < 3:
            await asyncio.sleep(0.001)
        short = s.submit(request("short", max_tokens=1))
        await short.admitted.wait()
        admitted_at = engine.steps
        short_step = await first_token_step(engine, short)
        long_step = await long_first
    finally:
        s.stop()
    if fair:
        assert short_step - admitted_at <= 3, "the short prompt waited for the long one's prefill"
        assert short_step < long_step
        assert long_step <= 31 + 2  # the long prompt lost only the short one's few tokens
    else:
        assert short_step >= long_step  # first come, first served: it waited for all of it
