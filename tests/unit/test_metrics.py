"""Metrics recorded through the scheduler's hooks, with the fake engine; no sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.base import FinishReason, SamplingParams
from server.engine.fake import FakeEngine
from server.engine.prompt_cache.stats import RESTORE_BUCKETS, CacheStats, TierStats
from server.errors import QueueFullError
from server.ops.metrics import Metrics, ModelMetrics
from server.runtime.events import FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler

REPLY = "hello world"  # 11 bytes = 11 tokens with the fake engine, then EOS
MODEL = "fake-model"
GAUGES = (
    "llamaserve_requests_running",
    "llamaserve_requests_waiting",
    "llamaserve_slots",
    "llamaserve_slots_busy",
    "llamaserve_kv_cache_usage_ratio",
)


def request(prompt: str = "hi", max_tokens: int = 100) -> GenerationRequest:
    return GenerationRequest(list(prompt.encode()), SamplingParams(), max_tokens)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"{name}{labels} is not exported"
    return got


def of_model(metrics: Metrics, name: str, model: str = MODEL, **labels: str) -> float:
    """A per-model series: the same labels plus ``model``."""
    return value(metrics, name, model=model, **labels)


async def finish(handle: RequestHandle) -> FinishEvent:
    async for ev in handle.events():
        if isinstance(ev, FinishEvent):
            return ev
    raise AssertionError("no finish event")


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def engine() -> FakeEngine:
    # "long" requests run for seconds (step_delay x context), so tests can observe them mid-flight.
    return FakeEngine(
        reply=lambda p: "z" * 100_000 if "long" in p else REPLY, n_slots=2, n_ctx_per_seq=4096, step_delay=0.002
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
def model(engine: FakeEngine, metrics: Metrics) -> ModelMetrics:
    m = metrics.model(MODEL)
    m.set_model(engine.info)
    return m


@pytest.fixture
async def scheduler(engine: FakeEngine, model: ModelMetrics):  # type: ignore[no-untyped-def]
    s = Scheduler(engine, max_queue=0, hooks=model)
    s.start()
    yield s
    s.stop()


def test_each_metrics_object_has_its_own_registry() -> None:
    # Two apps in one process (as in the test suite) must not collide on metric names.
    a, b = Metrics(), Metrics()
    a.record_http_request("/v1/models", 200)
    assert value(a, "llamaserve_requests_total", endpoint="/v1/models", status="200") == 1
    assert b.registry.get_sample_value("llamaserve_requests_total", {"endpoint": "/v1/models", "status": "200"}) is None


def test_process_metrics_are_exported() -> None:
    m = Metrics()
    assert value(m, "process_resident_memory_bytes") > 0
    assert value(m, "process_open_fds") > 0
    # A live reading, not a constant: burning CPU makes it grow (it counts in 10 ms clock ticks).
    before = value(m, "process_cpu_seconds_total")
    start = time.process_time()
    while time.process_time() - start < 0.05:
        pass
    assert value(m, "process_cpu_seconds_total") > before


def test_model_info_and_pool_size(metrics: Metrics, model: ModelMetrics) -> None:
    labels = {"model": "fake-model", "quantization": "none", "n_ctx": "4096", "n_parallel": "2", "devices": "1"}
    assert value(metrics, "llamaserve_model_info", **labels) == 1
    assert of_model(metrics, "llamaserve_slots") == 2


async def test_a_finished_request_is_counted_once_with_its_sizes(scheduler: Scheduler, metrics: Metrics) -> None:
    fin = await finish(scheduler.submit(request("hi")))
    assert fin.reason is FinishReason.STOP
    await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy") == 0)

    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="stop") == 1
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="length") == 0
    assert of_model(metrics, "llamaserve_prompt_tokens_total") == 2
    assert of_model(metrics, "llamaserve_generation_tokens_total") == len(REPLY)
    assert of_model(metrics, "llamaserve_request_prompt_tokens_sum") == 2
    assert of_model(metrics, "llamaserve_request_generation_tokens_sum") == len(REPLY)
    # 11 bytes fall in the (8, 16] bucket.
    assert of_model(metrics, "llamaserve_request_generation_tokens_bucket", le="8.0") == 0
    assert of_model(metrics, "llamaserve_request_generation_tokens_bucket", le="16.0") == 1
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert of_model(metrics, f"llamaserve_{name}_count") == 1
    assert of_model(metrics, "llamaserve_request_queue_time_seconds_count", priority="normal") == 1
    # The durations are the request's own: every engine step takes 2 ms, the first token comes out
    # of the first step and the reply takes 12 (11 bytes, then EOS); the queue wait is part of both.
    ttft = of_model(metrics, "llamaserve_time_to_first_token_seconds_sum")
    e2e = of_model(metrics, "llamaserve_e2e_request_latency_seconds_sum")
    queued = of_model(metrics, "llamaserve_request_queue_time_seconds_sum", priority="normal")
    assert ttft >= 0.002 and e2e >= 12 * 0.002
    assert 0 < queued < ttft < e2e
    assert of_model(metrics, "llamaserve_prompt_processing_seconds_count") == 1
    # One gap between each pair of sampled tokens: 11 text tokens + EOS = 12 tokens, 11 gaps.
    assert of_model(metrics, "llamaserve_inter_token_latency_seconds_count") == len(REPLY)
    # TTFT includes the queue wait and the prompt processing.
    assert of_model(metrics, "llamaserve_time_to_first_token_seconds_sum") > of_model(
        metrics, "llamaserve_prompt_processing_seconds_sum"
    )
    assert of_model(metrics, "llamaserve_requests_cancelled_total") == 0


async def test_length_finish_reason(scheduler: Scheduler, metrics: Metrics) -> None:
    fin = await finish(scheduler.submit(request("hi", max_tokens=3)))
    assert fin.reason is FinishReason.LENGTH
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="length") == 1
    assert of_model(metrics, "llamaserve_generation_tokens_total") == 3


async def test_prefix_cache_hits_are_counted(scheduler: Scheduler, metrics: Metrics) -> None:
    await finish(scheduler.submit(request("a shared system prompt, then question one")))
    await finish(scheduler.submit(request("a shared system prompt, then question two")))
    shared = len("a shared system prompt, then question ")
    # The second request reused the first one's slot and its common prefix.
    assert of_model(metrics, "llamaserve_prompt_cache_hit_tokens_total") == shared


async def test_cancel_frees_the_gauges_and_is_not_a_success(scheduler: Scheduler, metrics: Metrics) -> None:
    handle = scheduler.submit(request("long"))
    async for ev in handle.events():
        assert isinstance(ev, TokenEvent)
        break  # leaving the iterator cancels the request, as a disconnecting client does
    await wait_for(lambda: of_model(metrics, "llamaserve_requests_cancelled_total") == 1)
    # No other request runs, so no later decode step: the gauges must still drop to zero.
    await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy") == 0)
    assert of_model(metrics, "llamaserve_requests_running") == 0
    assert of_model(metrics, "llamaserve_e2e_request_latency_seconds_count") == 0
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="stop") == 0
    assert of_model(metrics, "llamaserve_generation_tokens_total") >= 1


async def test_gauges_follow_running_and_waiting(engine: FakeEngine, metrics: Metrics, model: ModelMetrics) -> None:
    s = Scheduler(engine, max_queue=1, hooks=model)
    s.start()
    try:
        running = [s.submit(request("long")), s.submit(request("long"))]
        await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy") == 2)
        waiting = s.submit(request("long"))
        await wait_for(lambda: of_model(metrics, "llamaserve_requests_waiting") == 1)
        assert of_model(metrics, "llamaserve_requests_running") == 2
        assert 0 < of_model(metrics, "llamaserve_kv_cache_usage_ratio") <= 1
        with pytest.raises(QueueFullError):
            s.submit(request("long"))
        assert value(metrics, "llamaserve_requests_rejected_total", reason="queue_full") == 1
        # Leaving while queued counts as a cancel and empties the queue.
        waiting.cancel()
        await wait_for(lambda: of_model(metrics, "llamaserve_requests_waiting") == 0)
        for h in running:
            h.cancel()
        await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy") == 0)
        assert of_model(metrics, "llamaserve_requests_cancelled_total") == 3
    finally:
        s.stop()


def test_kv_usage_ratio_is_cells_over_all_cells(metrics: Metrics, model: ModelMetrics) -> None:
    model.step_done(slots_busy=1, waiting=0, kv_cells=512, step_error=False)
    assert of_model(metrics, "llamaserve_kv_cache_usage_ratio") == 512 / (4096 * 2)


def test_engine_failure_counts_as_failed(metrics: Metrics, model: ModelMetrics) -> None:
    model.request_finished(FinishReason.ERROR, 5, 2, 0.1)
    assert of_model(metrics, "llamaserve_requests_failed_total") == 1
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="stop") == 0
    assert of_model(metrics, "llamaserve_requests_cancelled_total") == 0


def test_failed_engine_steps_are_counted(metrics: Metrics, model: ModelMetrics) -> None:
    model.step_done(slots_busy=0, waiting=0, kv_cells=0, step_error=False)
    assert of_model(metrics, "llamaserve_engine_step_errors_total") == 0
    model.step_done(slots_busy=0, waiting=0, kv_cells=0, step_error=True)
    assert of_model(metrics, "llamaserve_engine_step_errors_total") == 1


def test_rejections_by_reason(metrics: Metrics) -> None:
    for reason in ("queue_full", "context_overflow", "invalid"):
        assert value(metrics, "llamaserve_requests_rejected_total", reason=reason) == 0  # present before any
    metrics.record_rejected("context_overflow")
    assert value(metrics, "llamaserve_requests_rejected_total", reason="context_overflow") == 1


def test_render_text_by_default_and_openmetrics_on_request(metrics: Metrics, model: ModelMetrics) -> None:
    body, ctype = metrics.render(None)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert b"# TYPE llamaserve_time_to_first_token_seconds histogram" in body
    assert not body.rstrip().endswith(b"# EOF")

    body, ctype = metrics.render("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b"# TYPE llamaserve_requests counter" in body


async def test_watched_gauges_are_exact_the_moment_a_request_ends(
    engine: FakeEngine, metrics: Metrics, model: ModelMetrics
) -> None:
    # A scrape right after a response must not see the finished request still holding its slot.
    s = Scheduler(engine, max_queue=4, hooks=model)
    model.watch(s)
    s.start()
    try:
        for _ in range(5):
            handle = s.submit(request("hi"))
            await finish(handle)
            assert of_model(metrics, "llamaserve_slots_busy") == 0
            assert of_model(metrics, "llamaserve_requests_running") == 0
            assert of_model(metrics, "llamaserve_requests_waiting") == 0
    finally:
        s.stop()


def test_each_model_has_its_own_series(metrics: Metrics) -> None:
    a, b = metrics.model("a"), metrics.model("b")
    assert metrics.model("a") is a  # one view per model: its children are bound once
    a.set_model(FakeEngine(model_id="a", n_slots=2).info)
    b.set_model(FakeEngine(model_id="b", n_slots=1).info)
    a.request_finished(FinishReason.STOP, 5, 3, 0.1)
    b.request_finished(FinishReason.LENGTH, 7, 4, 0.2)
    b.request_finished(FinishReason.CANCELLED, 7, 1, 0.2)
    a.step_done(slots_busy=2, waiting=3, kv_cells=10, step_error=True)

    assert of_model(metrics, "llamaserve_request_success_total", model="a", finish_reason="stop") == 1
    assert of_model(metrics, "llamaserve_request_success_total", model="a", finish_reason="length") == 0
    assert of_model(metrics, "llamaserve_request_success_total", model="b", finish_reason="stop") == 0
    assert of_model(metrics, "llamaserve_request_success_total", model="b", finish_reason="length") == 1
    assert of_model(metrics, "llamaserve_generation_tokens_total", model="a") == 3
    assert of_model(metrics, "llamaserve_generation_tokens_total", model="b") == 5
    assert of_model(metrics, "llamaserve_request_prompt_tokens_sum", model="b") == 7
    assert of_model(metrics, "llamaserve_requests_cancelled_total", model="a") == 0
    assert of_model(metrics, "llamaserve_requests_cancelled_total", model="b") == 1
    assert of_model(metrics, "llamaserve_engine_step_errors_total", model="a") == 1
    assert of_model(metrics, "llamaserve_engine_step_errors_total", model="b") == 0
    assert of_model(metrics, "llamaserve_slots", model="a") == 2
    assert of_model(metrics, "llamaserve_slots", model="b") == 1
    assert of_model(metrics, "llamaserve_requests_waiting", model="a") == 3
    assert of_model(metrics, "llamaserve_requests_waiting", model="b") == 0
    for m in ("a", "b"):
        info = {
            "model": m,
            "quantization": "none",
            "n_ctx": "2048",
            "n_parallel": "2" if m == "a" else "1",
            "devices": "1",
        }
        assert value(metrics, "llamaserve_model_info", **info) == 1


def test_a_new_models_series_start_at_zero(metrics: Metrics) -> None:
    # Present before the first event, so rate() and alerts see the first one.
    metrics.model("late")
    for name in ("llamaserve_requests_cancelled_total", "llamaserve_requests_failed_total"):
        assert of_model(metrics, name, model="late") == 0
    assert of_model(metrics, "llamaserve_request_success_total", model="late", finish_reason="stop") == 0
    assert of_model(metrics, "llamaserve_time_to_first_token_seconds_count", model="late") == 0
    # Gauges describe a loaded model, and this one is not loaded yet.
    assert metrics.registry.get_sample_value("llamaserve_slots", {"model": "late"}) is None


def test_rejections_have_no_model_label(metrics: Metrics, model: ModelMetrics) -> None:
    # A scheduler's queue_full joins the refusals the HTTP layer counts: one series per reason.
    model.request_rejected("queue_full")
    metrics.record_rejected("queue_full")
    assert value(metrics, "llamaserve_requests_rejected_total", reason="queue_full") == 2


def test_forget_drops_the_gauges_and_keeps_the_counters(
    engine: FakeEngine, metrics: Metrics, model: ModelMetrics
) -> None:
    info = {"model": MODEL, "quantization": "none", "n_ctx": "4096", "n_parallel": "2", "devices": "1"}
    other = metrics.model("other")
    other.set_model(FakeEngine(model_id="other").info)
    model.request_finished(FinishReason.STOP, 5, 3, 0.1)
    model.step_done(slots_busy=1, waiting=0, kv_cells=512, step_error=False)

    model.forget()
    for name in GAUGES:
        assert metrics.registry.get_sample_value(name, {"model": MODEL}) is None, name
        assert metrics.registry.get_sample_value(name, {"model": "other"}) is not None, name
    assert metrics.registry.get_sample_value("llamaserve_model_info", info) is None
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="stop") == 1
    assert of_model(metrics, "llamaserve_generation_tokens_total") == 3

    # A scheduler still winding down must not bring an unloaded model's gauges back.
    model.request_queued()
    model.step_done(slots_busy=1, waiting=1, kv_cells=512, step_error=False)
    for name in GAUGES:
        assert metrics.registry.get_sample_value(name, {"model": MODEL}) is None, name
    body, _ = metrics.render(None)
    assert f'llamaserve_slots{{model="{MODEL}"}}'.encode() not in body
    assert b'llamaserve_slots{model="other"}' in body

    # Loaded again: back, and the counters went on from where they were.
    model.set_model(engine.info)
    assert of_model(metrics, "llamaserve_slots") == 2
    assert value(metrics, "llamaserve_model_info", **info) == 1
    model.request_finished(FinishReason.STOP, 5, 3, 0.1)
    assert of_model(metrics, "llamaserve_request_success_total", finish_reason="stop") == 2


async def test_watched_gauges_read_each_models_scheduler(engine: FakeEngine, metrics: Metrics) -> None:
    idle_engine = FakeEngine(model_id="idle", n_slots=3)
    busy, idle = metrics.model("busy"), metrics.model("idle")
    busy.set_model(engine.info)
    idle.set_model(idle_engine.info)
    s = Scheduler(engine, max_queue=4, hooks=busy)
    t = Scheduler(idle_engine, max_queue=4, hooks=idle)
    busy.watch(s)
    idle.watch(t)
    s.start()
    t.start()
    try:
        handles = [s.submit(request("long")) for _ in range(3)]
        await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy", model="busy") == 2)
        assert of_model(metrics, "llamaserve_requests_waiting", model="busy") == 1
        assert of_model(metrics, "llamaserve_slots_busy", model="idle") == 0
        assert of_model(metrics, "llamaserve_requests_waiting", model="idle") == 0
        for h in handles:
            h.cancel()
        await wait_for(lambda: of_model(metrics, "llamaserve_slots_busy", model="busy") == 0)
    finally:
        s.stop()
        t.stop()


def test_prompt_cache_series_are_read_from_the_engine_at_scrape_time(metrics: Metrics, model: ModelMetrics) -> None:
    stats = CacheStats(
        ram=TierStats(hits=3, misses=2, evictions=1, bytes=4096, entries=2),
        disk=TierStats(hits=1, bytes=8192, entries=4),
        corrupt_files=1,
        restore_counts=(0, 2, *[0] * (len(RESTORE_BUCKETS) - 1)),
        restore_seconds_sum=0.0015,
    )
    current: list[CacheStats | None] = [None]
    model.watch_cache(lambda: current[0])
    assert (
        metrics.registry.get_sample_value("llamaserve_prompt_cache_hits_total", {"model": MODEL, "tier": "ram"}) is None
    )
    current[0] = stats
    assert of_model(metrics, "llamaserve_prompt_cache_hits_total", tier="ram") == 3
    assert of_model(metrics, "llamaserve_prompt_cache_hits_total", tier="disk") == 1
    assert of_model(metrics, "llamaserve_prompt_cache_misses_total", tier="ram") == 2
    assert of_model(metrics, "llamaserve_prompt_cache_evictions_total", tier="ram") == 1
    assert of_model(metrics, "llamaserve_prompt_cache_bytes", tier="disk") == 8192
    assert of_model(metrics, "llamaserve_prompt_cache_entries", tier="ram") == 2
    assert of_model(metrics, "llamaserve_prompt_cache_corrupt_files_total") == 1
    assert of_model(metrics, "llamaserve_prompt_cache_restore_seconds_bucket", le="0.0005") == 0
    assert of_model(metrics, "llamaserve_prompt_cache_restore_seconds_bucket", le="0.001") == 2
    assert of_model(metrics, "llamaserve_prompt_cache_restore_seconds_bucket", le="+Inf") == 2
    assert of_model(metrics, "llamaserve_prompt_cache_restore_seconds_count") == 2
    assert of_model(metrics, "llamaserve_prompt_cache_restore_seconds_sum") == 0.0015
    text, _ = metrics.render(None)
    assert b'llamaserve_prompt_cache_hits_total{model="fake-model",tier="ram"} 3.0' in text
    model.forget()  # unloaded: the engine and its counters are gone
    assert (
        metrics.registry.get_sample_value("llamaserve_prompt_cache_hits_total", {"model": MODEL, "tier": "ram"}) is None
    )


class _Store:
    """A response store as the gauges see it: numbers that change between scrapes."""

    def __init__(self) -> None:
        self.n, self.size, self.broken = 0, 0, False

    def count(self) -> int:
        if self.broken:
            raise RuntimeError("disk gone")
        return self.n

    def bytes_used(self) -> int:
        return self.size


def test_stored_responses_are_read_from_the_store_at_scrape_time(metrics: Metrics) -> None:
    store = _Store()
    assert metrics.registry.get_sample_value("llamaserve_responses_stored") is None  # no store yet
    metrics.stored_responses.watch(store)
    assert value(metrics, "llamaserve_responses_stored") == 0
    store.n, store.size = 3, 4096
    assert value(metrics, "llamaserve_responses_stored") == 3
    assert value(metrics, "llamaserve_responses_stored_bytes") == 4096
    assert b"\nllamaserve_responses_stored 3.0\n" in metrics.render(None)[0]
    store.broken = True  # a failing store leaves the rest of /metrics whole
    text, _ = metrics.render(None)
    assert b"\nllamaserve_responses_stored " not in text and b"\nllamaserve_requests_rejected_total" in text
    store.broken = False
    metrics.stored_responses.watch(None)  # the app stopped: no value rather than a stale one
    assert metrics.registry.get_sample_value("llamaserve_responses_stored") is None
