"""Progress events (stream_options.include_progress): queue positions and prefill, and their cost when off."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from server.engine.base import SamplingParams
from server.engine.fake import FakeEngine
from server.runtime.events import Event, FinishEvent, GenerationRequest, PrefillEvent, QueuedEvent, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler
from server.runtime.waitqueue import WaitQueue


def request(prompt: str, *, progress: bool, max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(list(prompt.encode()), SamplingParams(), max_tokens, progress=progress)


async def events(handle: RequestHandle) -> list[Event]:
    return [ev async for ev in handle.events()]


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    # One slot and 64-token steps: a 1000-byte prompt takes 16 prefill steps.
    s = Scheduler(FakeEngine(reply=lambda p: "ok", n_slots=1, n_batch=64, step_delay=0.002), max_queue=8)
    s.start()
    yield s
    s.stop()


async def test_prefill_progress_climbs_chunk_by_chunk_before_the_first_token(scheduler: Scheduler) -> None:
    prompt = "x" * 1000
    got = await events(scheduler.submit(request(prompt, progress=True)))
    first_token = next(i for i, ev in enumerate(got) if isinstance(ev, TokenEvent))
    progress = [ev for ev in got if isinstance(ev, PrefillEvent)]
    assert all(isinstance(ev, PrefillEvent) for ev in got[:first_token])
    assert got.index(progress[-1]) < first_token  # every progress event precedes the first token
    done = [ev.processed for ev in progress]
    assert done[0] == 0 and done[-1] == len(prompt) == progress[0].total
    assert done == sorted(set(done)) and len(done) == 1 + len(prompt) // 64 + 1  # the start, then each chunk
    assert all(b - a <= 64 for a, b in itertools.pairwise(done))
    assert isinstance(got[-1], FinishEvent)


async def test_a_reused_prefix_starts_the_bar_part_way(scheduler: Scheduler) -> None:
    prompt = "y" * 300
    await events(scheduler.submit(request(prompt, progress=False)))
    got = await events(scheduler.submit(request(prompt + " and more", progress=True)))
    first = next(ev for ev in got if isinstance(ev, PrefillEvent))
    assert first.cached == first.processed == len(prompt)  # the cells held it already
    assert first.total == len(prompt) + len(" and more")


async def test_waiting_requests_hear_their_queue_position_as_it_changes(scheduler: Scheduler) -> None:
    first = scheduler.submit(request("z" * 2000, progress=False))  # holds the one slot for ~32 steps
    await first.admitted.wait()
    second = scheduler.submit(request("a", progress=True))
    third = scheduler.submit(request("b", progress=True))
    got_second, got_third, _ = await asyncio.gather(events(second), events(third), events(first))
    queued_second = [ev.position for ev in got_second if isinstance(ev, QueuedEvent)]
    queued_third = [ev.position for ev in got_third if isinstance(ev, QueuedEvent)]
    assert queued_second == [1]
    assert queued_third == [2, 1]  # moved up when the second took the slot
    # Positions come before that request's prefill starts.
    assert isinstance(got_third[0], QueuedEvent) and isinstance(got_third[-1], FinishEvent)


async def test_without_progress_no_event_is_made_and_no_position_is_worked_out(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_: object) -> object:
        raise AssertionError("worked out progress nobody asked for")

    monkeypatch.setattr(WaitQueue, "ranked", forbidden)
    monkeypatch.setattr(scheduler.engine, "prefill_progress", forbidden)
    handles = [scheduler.submit(request("q" * 500, progress=False)) for _ in range(3)]
    results = await asyncio.gather(*(events(h) for h in handles))
    for got in results:
        assert not any(isinstance(ev, QueuedEvent | PrefillEvent) for ev in got)
        assert isinstance(got[-1], FinishEvent)
