"""Preemption: who is paused, when, and that a paused stream goes on as if it never stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from server.engine.base import PauseRefusedError, SamplingParams
from server.engine.fake import FakeEngine
from server.errors import ServiceUnavailableError
from server.runtime.events import ErrorEvent, FinishEvent, GenerationRequest, NoHooks
from server.runtime.preemption import choose_victims
from server.runtime.scheduler import Scheduler
from tests.helpers.streams import collect

# ---- the rule, on its own ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    priority: int
    n_cells: int = 10
    started_at: float = 0.0


@dataclass(frozen=True)
class Wait:
    priority: int
    queued_at: float = 0.0


def victims(
    running: list[Run], waiting: list[Wait], *, now: float = 10.0, after: float = 1.0, limit: int = 8
) -> list[str]:
    return [v.name for v in choose_victims(running, waiting, now=now, after=after, limit=limit)]


def test_the_worst_priority_is_paused_then_the_fewest_cells_then_the_latest_started() -> None:
    running = [
        Run("mid", 5),
        Run("worst-big", 10, n_cells=500),
        Run("worst-small-early", 10, n_cells=20, started_at=1.0),
        Run("worst-small-late", 10, n_cells=20, started_at=2.0),
    ]
    assert victims(running, [Wait(0)]) == ["worst-small-late"]
    assert victims(running, [Wait(0), Wait(0)]) == ["worst-small-late", "worst-small-early"]


def test_never_for_a_request_of_equal_or_better_priority_held_by_the_running() -> None:
    assert victims([Run("a", 5), Run("b", 5)], [Wait(5), Wait(7)]) == []
    # One overdue priority-3 request outranks both priority-5 sequences, but takes only one slot.
    assert victims([Run("a", 5), Run("b", 5)], [Wait(3), Wait(5)]) == ["a"]
    # Each overdue request needs a worse one: priority 1 may pause the 5, not the 1 beside it.
    assert victims([Run("one", 1), Run("five", 5)], [Wait(0), Wait(1)]) == ["five"]


def test_not_before_the_request_has_waited_preempt_after() -> None:
    assert victims([Run("a", 10)], [Wait(0, queued_at=9.5)], now=10.0, after=1.0) == []
    assert victims([Run("a", 10)], [Wait(0, queued_at=8.5)], now=10.0, after=1.0) == ["a"]


def test_off_at_zero_and_bounded_by_the_limit() -> None:
    running = [Run("a", 10), Run("b", 10)]
    assert victims(running, [Wait(0), Wait(0)], after=0) == []
    assert victims(running, [Wait(0), Wait(0)], limit=1) == ["a"]
    assert victims(running, [Wait(0), Wait(0)], limit=0) == []


# ---- the fake engine keeps the contract ---------------------------------------------------------


def test_the_fake_refuses_to_pause_an_idle_slot_and_resumes_where_it_stopped() -> None:
    engine = FakeEngine(reply=lambda p: "abcdef", n_slots=2)
    with pytest.raises(PauseRefusedError):
        engine.pause(0)
    engine.begin(0, list(b"hi"), SamplingParams())
    first = [o.token for o in engine.step() + engine.step()]
    paused = engine.pause(0)
    assert engine.step() == [] and engine.active_slots() == 0
    engine.resume(1, paused)  # another slot: the state moves with it
    rest = [o.token for _ in range(5) for o in engine.step()]
    assert bytes(first + rest[:4]) == b"abcdef" and engine.paused == set()


# ---- the scheduler ------------------------------------------------------------------------------

REPLY = "".join(chr(ord("a") + i % 26) for i in range(120))  # no byte repeats within 26 steps


class Recorder(NoHooks):
    def __init__(self) -> None:
        self.preempted_at: list[float] = []

    def request_preempted(self) -> None:
        self.preempted_at.append(time.monotonic())


@dataclass
class Setup:
    s: Scheduler
    engine: FakeEngine
    hooks: Recorder


@pytest.fixture
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    n_slots, after = getattr(request, "param", (1, 0.05))
    engine = FakeEngine(reply=lambda p: REPLY, n_slots=n_slots, step_delay=0.003)
    hooks = Recorder()
    s = Scheduler(engine, max_queue=16, hooks=hooks, preempt_after=after)
    s.start()
    yield Setup(s, engine, hooks)
    s.stop()


def req(name: str, priority: int, max_tokens: int = 100, stop: tuple[str, ...] = ()) -> GenerationRequest:
    # Each request its own key, so waiting_by_key() names who waits.
    return GenerationRequest(list(name.encode()), SamplingParams(), max_tokens, stop, priority=priority, key_id=name)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def running(
    s: Scheduler, name: str, priority: int, **kw: object
) -> tuple[asyncio.Task[tuple[str, FinishEvent | ErrorEvent]], list[int]]:
    """Submit ``name`` and return once it has generated a few tokens."""
    tokens: list[int] = []
    task = asyncio.create_task(collect(s.submit(req(name, priority, **kw)), tokens))  # type: ignore[arg-type]
    await wait_for(lambda: len(tokens) >= 5)
    return task, tokens


async def test_a_paused_stream_goes_on_without_losing_or_repeating_a_token(setup: Setup) -> None:
    s = setup.s
    low, low_tokens = await running(s, "low", 10)
    text_hi, fin_hi = await collect(s.submit(req("high", 0, max_tokens=10)))
    assert text_hi == REPLY[:10] and isinstance(fin_hi, FinishEvent)
    assert len(setup.hooks.preempted_at) == 1
    text, fin = await low
    assert text == REPLY[:100] and isinstance(fin, FinishEvent) and fin.completion_tokens == 100
    assert bytes(low_tokens).decode() == REPLY[:100]
    assert setup.engine.paused == set() and s.waiting == 0 and s.busy == 0


async def test_stop_string_matching_survives_the_pause(setup: Setup) -> None:
    s = setup.s
    # The stop string is far enough in that the pause falls before it: a partial match held then must not leak.
    low, _ = await running(s, "low", 10, stop=("uvwxyz",))
    await collect(s.submit(req("high", 0, max_tokens=3)))
    text, fin = await low
    assert text == REPLY[: REPLY.index("uvwxyz")] and isinstance(fin, FinishEvent) and fin.stop_sequence == "uvwxyz"


async def test_not_before_preempt_after() -> None:
    engine = FakeEngine(reply=lambda p: REPLY, n_slots=1, step_delay=0.003)
    hooks = Recorder()
    s = Scheduler(engine, max_queue=4, hooks=hooks, preempt_after=0.3)
    s.start()
    try:
        low, _ = await running(s, "low", 10, max_tokens=300)
        submitted = time.monotonic()
        await collect(s.submit(req("high", 0, max_tokens=2)))
        assert len(hooks.preempted_at) == 1 and hooks.preempted_at[0] - submitted >= 0.3
        await low
    finally:
        s.stop()


async def test_never_for_equal_or_worse_priority(setup: Setup) -> None:
    s = setup.s
    low, _ = await running(s, "low", 10, max_tokens=60)
    same = asyncio.create_task(collect(s.submit(req("same", 10, max_tokens=2))))
    worse = asyncio.create_task(collect(s.submit(req("worse", 20, max_tokens=2))))
    await low  # 60 steps of 3 ms: many times preempt_after
    await asyncio.gather(same, worse)
    assert setup.hooks.preempted_at == []


@pytest.mark.parametrize("setup", [(2, 0.05)], indirect=True)
async def test_the_worst_running_sequence_is_the_one_paused(setup: Setup) -> None:
    s = setup.s
    mid, _ = await running(s, "mid", 5)
    low, _ = await running(s, "low", 10)
    high = asyncio.create_task(collect(s.submit(req("high", 0, max_tokens=40))))
    await wait_for(lambda: len(setup.hooks.preempted_at) == 1)
    await wait_for(lambda: s.waiting_by_key() == {"low": 1})
    await asyncio.gather(mid, low, high)


async def test_cancelling_a_paused_request_frees_its_state(setup: Setup) -> None:
    s, engine = setup.s, setup.engine
    handle = s.submit(req("low", 10, max_tokens=500))
    await handle.admitted.wait()
    high = asyncio.create_task(collect(s.submit(req("high", 0, max_tokens=100))))
    await wait_for(lambda: len(engine.paused) == 1 and s.waiting == 1)
    handle.cancel()
    await wait_for(lambda: engine.paused == set() and s.waiting == 0)
    await high


async def test_a_drain_lets_a_paused_request_resume_and_finish(setup: Setup) -> None:
    s = setup.s
    low, _ = await running(s, "low", 10)
    high = asyncio.create_task(collect(s.submit(req("high", 0, max_tokens=20))))
    await wait_for(lambda: len(setup.engine.paused) == 1)
    s.stop_accepting()
    await wait_for(lambda: not s.has_work)
    text, _ = await low
    assert text == REPLY[:100]
    await high


async def test_shutdown_ends_a_paused_request_and_frees_its_state(setup: Setup) -> None:
    s, engine = setup.s, setup.engine
    low, _ = await running(s, "low", 10, max_tokens=500)
    high = asyncio.create_task(collect(s.submit(req("high", 0, max_tokens=500))))
    await wait_for(lambda: len(engine.paused) == 1)
    s.stop()
    _, ev = await low
    assert isinstance(ev, ErrorEvent) and isinstance(ev.error, ServiceUnavailableError)
    assert engine.paused == set()
    await high


@pytest.mark.parametrize("setup", [(1, 0.0)], indirect=True)
async def test_zero_preempt_after_turns_preemption_off(setup: Setup) -> None:
    s = setup.s
    low, _ = await running(s, "low", 10, max_tokens=50)
    await collect(s.submit(req("high", 0, max_tokens=2)))
    text, _ = await low
    assert text == REPLY[:50] and setup.hooks.preempted_at == []
