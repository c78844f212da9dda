from __future__ import annotations

import asyncio

import pytest

from server.engine.base import EngineError, FinishReason, SamplingParams
from server.engine.fake import FakeEngine
from server.errors import QueueFullError
from server.runtime.events import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler


def request(prompt: str = "hi", max_tokens: int = 100, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(list(prompt.encode()), SamplingParams(), max_tokens, stop)


async def collect(handle: RequestHandle) -> tuple[str, FinishEvent | ErrorEvent]:
    text = ""
    async for ev in handle.events():
        if isinstance(ev, TokenEvent):
            text += ev.text
        else:
            if isinstance(ev, FinishEvent):
                text += ev.text
            return text, ev
    raise AssertionError("stream ended without a final event")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda p: "hello world", n_slots=2, step_delay=0.001)


@pytest.fixture
async def scheduler(engine: FakeEngine):  # type: ignore[no-untyped-def]
    s = Scheduler(engine, max_queue=2)
    s.start()
    yield s
    s.stop()


async def wait_for(predicate, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_generates_until_end_of_generation(scheduler: Scheduler) -> None:
    text, fin = await collect(scheduler.submit(request()))
    assert text == "hello world"
    assert isinstance(fin, FinishEvent)
    assert fin.reason is FinishReason.STOP
    assert fin.completion_tokens == len("hello world")
    assert fin.prompt_tokens == 2


async def test_max_tokens_finishes_with_length(scheduler: Scheduler) -> None:
    text, fin = await collect(scheduler.submit(request(max_tokens=5)))
    assert text == "hello"
    assert isinstance(fin, FinishEvent) and fin.reason is FinishReason.LENGTH


async def test_stop_string_finishes_without_leaking(scheduler: Scheduler) -> None:
    text, fin = await collect(scheduler.submit(request(stop=("xyz", "o w"))))
    assert text == "hell"
    assert isinstance(fin, FinishEvent) and fin.reason is FinishReason.STOP
    assert fin.stop_sequence == "o w"  # which one matched, for APIs that report it


async def test_an_end_of_generation_stop_names_no_stop_sequence(scheduler: Scheduler) -> None:
    _, fin = await collect(scheduler.submit(request(stop=("xyz",))))
    assert isinstance(fin, FinishEvent) and fin.reason is FinishReason.STOP and fin.stop_sequence is None


async def test_requests_beyond_slots_wait_fifo_then_all_complete(scheduler: Scheduler) -> None:
    handles = [scheduler.submit(request(str(i))) for i in range(4)]
    results = await asyncio.gather(*(collect(h) for h in handles))
    assert [r[0] for r in results] == ["hello world"] * 4
    assert scheduler.busy == 0 and scheduler.waiting == 0


async def test_full_queue_is_refused_with_retry_after(engine: FakeEngine) -> None:
    s = Scheduler(engine, max_queue=1)
    # Not started: nothing is admitted, so slots (2) + queue (1) fill up deterministically.
    handles = [s.submit(request()) for _ in range(3)]
    with pytest.raises(QueueFullError) as err:
        s.submit(request())
    assert err.value.retry_after >= 1
    s.start()
    try:
        for h in handles:
            _, fin = await collect(h)
            assert isinstance(fin, FinishEvent)
    finally:
        s.stop()


async def test_cancel_frees_the_slot_within_a_step() -> None:
    slow = FakeEngine(reply=lambda p: "x" * 10_000, n_slots=1, step_delay=0.002)
    s = Scheduler(slow, max_queue=4)
    s.start()
    try:
        handle = s.submit(request())
        await handle.admitted.wait()
        steps_at_cancel = slow.steps
        handle.cancel()
        # Freed in the scheduler's books and in the engine itself.
        await wait_for(lambda: s.busy == 0 and slow.active_slots() == 0)
        assert slow.steps - steps_at_cancel <= 2
        assert slow.n_cached_cells() == 0  # the KV cells were released, not kept
        # The next request gets the slot at once.
        text, _ = await collect(s.submit(request(max_tokens=3)))
        assert text == "xxx"
    finally:
        s.stop()


async def test_cancelled_waiting_request_never_takes_a_slot() -> None:
    slow = FakeEngine(reply=lambda p: "y" * 50, n_slots=1, step_delay=0.002)
    s = Scheduler(slow, max_queue=4)
    s.start()
    try:
        first = s.submit(request())
        queued = s.submit(request("queued"))
        queued.cancel()
        await collect(first)
        await wait_for(lambda: s.waiting == 0 and s.busy == 0)
        assert not queued.admitted.is_set()
    finally:
        s.stop()


async def test_leaving_the_event_iterator_cancels() -> None:
    # On its own this reply runs for 20 s (10,000 steps of 2 ms): only the cancel that leaving the
    # iterator sends can end it within the wait below.
    slow = FakeEngine(reply=lambda p: "x" * 10_000, n_slots=1, step_delay=0.002)
    s = Scheduler(slow, max_queue=4)
    s.start()
    try:
        handle = s.submit(request(max_tokens=10_000))
        async for ev in handle.events():
            assert isinstance(ev, TokenEvent)
            break
        await wait_for(lambda: s.busy == 0 and slow.active_slots() == 0, timeout=1.0)
        assert slow.n_cached_cells() == 0  # the KV cells were released, not kept
    finally:
        s.stop()


async def test_engine_failure_fails_only_that_step_and_keeps_serving(scheduler: Scheduler, engine: FakeEngine) -> None:
    engine.fail_next_step = True
    _, ev = await collect(scheduler.submit(request()))
    assert isinstance(ev, ErrorEvent) and isinstance(ev.error, EngineError)
    text, _ = await collect(scheduler.submit(request()))
    assert text == "hello world"


async def test_prefix_cache_is_reused_by_the_same_conversation(scheduler: Scheduler) -> None:
    _, first = await collect(scheduler.submit(request("a long shared system prompt. turn one")))
    _, second = await collect(scheduler.submit(request("a long shared system prompt. turn one and two")))
    assert isinstance(first, FinishEvent) and isinstance(second, FinishEvent)
    assert first.cached_tokens == 0
    assert second.cached_tokens == len("a long shared system prompt. turn one")


async def test_bad_request_at_begin_fails_only_that_request(scheduler: Scheduler) -> None:
    bad = GenerationRequest([1, 2], SamplingParams(grammar="not a grammar"), 5)
    _, ev = await collect(scheduler.submit(bad))
    assert isinstance(ev, ErrorEvent)
    text, _ = await collect(scheduler.submit(request()))
    assert text == "hello world"


async def test_a_new_prompt_takes_the_slot_that_loses_nothing_before_the_least_recently_used() -> None:
    engine = FakeEngine(reply=lambda p: "x" * 10_000 if "slow" in p else "ok", n_slots=2, step_delay=0.001)
    s = Scheduler(engine)
    s.start()
    try:
        await collect(s.submit(request("conversation a")))  # slot 0 keeps it
        slow = s.submit(request("slow b"))  # the empty slot 1, then cancelled: empty again, and most recent
        await slow.admitted.wait()
        slow.cancel()
        await wait_for(lambda: s.busy == 0 and engine.active_slots() == 0)
        await collect(s.submit(request("zzz")))  # takes slot 1: slot 0 would lose conversation a
        _, fin = await collect(s.submit(request("conversation a, again")))
        assert isinstance(fin, FinishEvent) and fin.cached_tokens == len("conversation a")
    finally:
        s.stop()


async def test_work_arriving_after_a_long_idle_counts_the_liveness_clock_from_its_arrival(engine: FakeEngine) -> None:
    # The engine thread is not running here, as one slow to wake on a loaded machine: liveness
    # must not take the time it idled before the request for a step it failed to finish.
    s = Scheduler(engine, max_queue=2)
    s.last_step_finished -= 60.0
    before = s.last_step_finished
    handle = s.submit(request())
    assert s.has_work and s.last_step_finished - before >= 59.0
    busy_since = s.last_step_finished
    s.submit(request())  # work was owed already: the clock is not reset by more of it
    assert s.last_step_finished == busy_since
    handle.cancel()
