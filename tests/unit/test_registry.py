"""The model registry: routing by name, loading on first use, LRU and idle unloading (fake engines)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from server.engine.base import Engine, SamplingParams
from server.engine.fake import FakeEngine
from server.errors import ModelNotFoundError, ServiceUnavailableError
from server.runtime.events import ErrorEvent, GenerationRequest
from server.runtime.scheduler import RequestHandle, Scheduler
from server.services.model import LoadedModel
from server.services.registry import ModelRegistry
from server.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Engine factory and serve callback that note what was loaded and closed."""

    def __init__(self, *, step_delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.loads: list[str] = []
        self.closes: list[str] = []
        self.step_delay = step_delay
        self.gate = gate

    def load(self, s: Settings) -> Engine:
        if self.gate is not None:
            assert self.gate.wait(30)
        self.loads.append(s.alias or "?")
        return FakeEngine(model_id=s.alias or "?", reply=lambda p: "x" * 200, step_delay=self.step_delay, n_slots=1)

    def serve(self, s: Settings, engine: Engine) -> LoadedModel:
        scheduler = Scheduler(engine, max_queue=4)
        scheduler.start()
        name = s.alias or "?"
        return LoadedModel.serve(name, engine, scheduler, on_close=lambda: self.closes.append(name))


def models(*aliases: str) -> list[Settings]:
    return [Settings(alias=a, ctx_size=256, parallel=1) for a in aliases]


@pytest.fixture
async def clock() -> AsyncIterator[Clock]:
    yield Clock()


async def test_lists_every_model_and_loads_on_first_request(clock: Clock) -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a", "b", "c"), load=rec.load, serve=rec.serve, max_loaded=1, clock=clock)
    await reg.start()
    try:
        assert [m.id for m in reg.list_models().data] == ["a", "b", "c"]
        assert reg.loaded_ids() == ["a"]  # only what fits is loaded up front
        clock.now += 10
        service = await reg.get("b")
        assert service.model_id == "b"
        assert reg.loaded_ids() == ["b"]
        assert rec.loads == ["a", "b"] and rec.closes == ["a"]  # the least recently used went
        clock.now += 10
        assert (await asyncio.wait_for(reg.get(None), 30)).model_id == "a"  # no name: the first model
    finally:
        await reg.close()
    assert rec.closes == ["a", "b", "a"]


async def test_least_recently_used_is_unloaded(clock: Clock) -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a", "b", "c"), load=rec.load, serve=rec.serve, max_loaded=2, clock=clock)
    await reg.start()
    try:
        assert reg.loaded_ids() == ["a", "b"]
        clock.now += 10
        await reg.get("a")  # a is now more recent than b
        clock.now += 10
        await asyncio.wait_for(reg.get("c"), 30)
        assert sorted(reg.loaded_ids()) == ["a", "c"]
        assert rec.closes == ["b"]
    finally:
        await reg.close()


async def test_one_model_answers_any_name_unless_strict(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a"), load=rec.load, serve=rec.serve)
    strict = ModelRegistry(models("a"), load=rec.load, serve=rec.serve, strict_names=True)
    await reg.start()
    await strict.start()
    try:
        with caplog.at_level("INFO", logger="server.services.registry"):
            assert (await reg.get("gpt-3.5-turbo")).model_id == "a"
            assert (await reg.get("gpt-3.5-turbo")).model_id == "a"
            assert (await reg.get("davinci-002")).model_id == "a"
        said = [r.getMessage() for r in caplog.records if "is not served" in r.getMessage()]
        assert len(said) == 2 and "gpt-3.5-turbo" in said[0] and "davinci-002" in said[1]  # once per name
        with pytest.raises(ModelNotFoundError, match="'nope' does not exist"):
            await strict.get("nope")
        with pytest.raises(ModelNotFoundError):
            reg.model("nope")  # GET /v1/models/{id} describes what is served, never the fallback
    finally:
        await reg.close()
        await strict.close()


async def test_several_models_refuse_an_unknown_name_unless_a_default_is_set() -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve)
    fallback = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, fallback="b")
    await reg.start()
    await fallback.start()
    try:
        with pytest.raises(ModelNotFoundError):
            await reg.get("gpt-4o")
        assert (await fallback.get("gpt-4o")).model_id == "b"
        assert (await fallback.get("a")).model_id == "a"
        with pytest.raises(ValueError, match="'c' is not served"):
            ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, fallback="c")
    finally:
        await reg.close()
        await fallback.close()


async def test_comma_separated_aliases_route_to_one_model_and_are_listed() -> None:
    rec = Recorder()
    reg = ModelRegistry(models("llama, gpt-4o,gpt-4", "smol"), load=rec.load, serve=rec.serve)
    await reg.start()
    try:
        assert reg.ids == ["llama", "smol"]
        assert (await reg.get("gpt-4")).model_id == "llama" and (await reg.get("gpt-4o")).model_id == "llama"
        listed = reg.list_models().model_dump()["data"]
        assert [(m["id"], m.get("aliases")) for m in listed] == [("llama", ["gpt-4o", "gpt-4"]), ("smol", None)]
        assert reg.model("gpt-4o").id == "llama"
        assert rec.loads == ["llama", "smol"]  # the engine is loaded under the id, not the name list
    finally:
        await reg.close()


async def test_a_busy_model_is_not_unloaded_until_its_requests_end(clock: Clock) -> None:
    rec = Recorder(step_delay=0.01)
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, max_loaded=1, clock=clock)
    await reg.start()
    try:
        service_a = await reg.get("a")
        handle = service_a.scheduler.submit(GenerationRequest([1, 2, 3], SamplingParams(), max_tokens=100_000))
        clock.now += 10
        want_b = asyncio.create_task(reg.get("b"))
        await asyncio.sleep(0.3)
        assert not want_b.done()  # a is generating: b waits rather than exceed the limit
        assert reg.waiting == 1  # the wait shows in the queue gauge
        assert reg.loaded_ids() == ["a"]
        handle.cancel()
        service_b = await asyncio.wait_for(want_b, 30)
        assert service_b.model_id == "b"
        assert reg.loaded_ids() == ["b"] and rec.closes == ["a"]
        assert reg.waiting == 0
    finally:
        await reg.close()


async def test_waiting_for_a_load_is_counted_as_waiting() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, max_loaded=0)
    gate.set()
    await reg.start()
    gate.clear()
    try:
        await reg.close()
        reg._closed = False  # reopen with nothing loaded, to watch a load from the start
        pending = asyncio.create_task(reg.get("b"))
        for _ in range(200):
            if reg.waiting == 1:
                break
            await asyncio.sleep(0.01)
        assert reg.waiting == 1 and not pending.done()
        gate.set()
        assert (await asyncio.wait_for(pending, 30)).model_id == "b"
        assert reg.waiting == 0
    finally:
        gate.set()
        await reg.close()


async def test_idle_models_are_unloaded_and_come_back(clock: Clock) -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, idle_unload=0.2, clock=clock)
    await reg.start()
    try:
        assert sorted(reg.loaded_ids()) == ["a", "b"]
        clock.now += 60
        await reg.get("a")  # a is used; b stays idle
        for _ in range(300):
            if rec.closes:
                break
            await asyncio.sleep(0.01)
        assert reg.loaded_ids() == ["a"] and rec.closes == ["b"]
        assert (await reg.get("b")).model_id == "b"  # loaded again on its next request
        assert rec.loads == ["a", "b", "b"]
    finally:
        await reg.close()


async def test_loads_and_unloads_happen_in_order_and_each_model_closes_once(clock: Clock) -> None:
    rec = Recorder()
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, max_loaded=1, clock=clock)
    await reg.start()
    assert reg.loaded("a") is not None and reg.loaded("b") is None
    clock.now += 10
    await reg.get("b")
    assert (rec.loads, rec.closes) == (["a", "b"], ["a"])
    assert reg.loaded() is None  # the first model is the default, and it is unloaded now
    await reg.close()
    assert rec.closes == ["a", "b"]


async def running_on_second_model(clock: Clock) -> tuple[ModelRegistry, LoadedModel, RequestHandle]:
    """Two models, with a long request running on the second (not the default) one."""
    rec = Recorder(step_delay=0.01)
    reg = ModelRegistry(models("a", "b"), load=rec.load, serve=rec.serve, clock=clock)
    await reg.start()
    service_b = await reg.get("b")
    handle = service_b.scheduler.submit(GenerationRequest([1, 2], SamplingParams(), max_tokens=100_000))
    await asyncio.wait_for(handle.admitted.wait(), 30)
    return reg, service_b, handle


async def test_drain_interface_covers_every_model(clock: Clock) -> None:
    reg, service_b, handle = await running_on_second_model(clock)
    try:
        assert reg.busy == 1  # b's request counts, though b is not the first model
        reg.stop_accepting()
        with pytest.raises(ServiceUnavailableError):
            await reg.get("a")
        with pytest.raises(ServiceUnavailableError):
            service_b.scheduler.submit(GenerationRequest([1], SamplingParams(), max_tokens=1))
        await asyncio.to_thread(reg.stop)
        events = [ev async for ev in handle.events()]
        assert isinstance(events[-1], ErrorEvent)  # the running request got its final error
    finally:
        await reg.close()


async def test_shutdown_drain_waits_for_and_ends_every_models_requests(clock: Clock) -> None:
    from server.api.shutdown import drain
    from server.api.state import AppState

    reg, _, handle = await running_on_second_model(clock)
    try:
        state = AppState(settings=Settings(), registry=reg)
        left = await drain(state, timeout=0.2)
        assert left == 1  # the second model's request was still running, so it was waited for
        events = [ev async for ev in handle.events()]
        assert isinstance(events[-1], ErrorEvent)
    finally:
        await reg.close()
