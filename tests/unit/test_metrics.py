"""Metrics recorded through the scheduler's hooks, with the fake engine; no sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.base import FinishReason, SamplingParams
from server.engine.fake import FakeEngine
from server.errors import QueueFullError
from server.ops.metrics import Metrics
from server.runtime.events import FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler

REPLY = "hello world"  # 11 bytes = 11 tokens with the fake engine, then EOS


def request(prompt: str = "hi", max_tokens: int = 100) -> GenerationRequest:
    return GenerationRequest(list(prompt.encode()), SamplingParams(), max_tokens)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"{name}{labels} is not exported"
    return got


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
def metrics(engine: FakeEngine) -> Metrics:
    m = Metrics(process=False)
    m.set_model(engine.info)
    return m


@pytest.fixture
async def scheduler(engine: FakeEngine, metrics: Metrics):  # type: ignore[no-untyped-def]
    s = Scheduler(engine, max_queue=0, hooks=metrics)
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


def test_model_info_and_pool_size(metrics: Metrics) -> None:
    labels = {"model": "fake-model", "quantization": "none", "n_ctx": "4096", "n_parallel": "2"}
    assert value(metrics, "llamaserve_model_info", **labels) == 1
    assert value(metrics, "llamaserve_slots") == 2


async def test_a_finished_request_is_counted_once_with_its_sizes(scheduler: Scheduler, metrics: Metrics) -> None:
    fin = await finish(scheduler.submit(request("hi")))
    assert fin.reason is FinishReason.STOP
    await wait_for(lambda: value(metrics, "llamaserve_slots_busy") == 0)

    assert value(metrics, "llamaserve_request_success_total", finish_reason="stop") == 1
    assert value(metrics, "llamaserve_request_success_total", finish_reason="length") == 0
    assert value(metrics, "llamaserve_prompt_tokens_total") == 2
    assert value(metrics, "llamaserve_generation_tokens_total") == len(REPLY)
    assert value(metrics, "llamaserve_request_prompt_tokens_sum") == 2
    assert value(metrics, "llamaserve_request_generation_tokens_sum") == len(REPLY)
    # 11 bytes fall in the (8, 16] bucket.
    assert value(metrics, "llamaserve_request_generation_tokens_bucket", le="8.0") == 0
    assert value(metrics, "llamaserve_request_generation_tokens_bucket", le="16.0") == 1
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert value(metrics, f"llamaserve_{name}_count") == 1
    # The durations are the request's own: every engine step takes 2 ms, the first token comes out
    # of the first step and the reply takes 12 (11 bytes, then EOS); the queue wait is part of both.
    ttft = value(metrics, "llamaserve_time_to_first_token_seconds_sum")
    e2e = value(metrics, "llamaserve_e2e_request_latency_seconds_sum")
    queued = value(metrics, "llamaserve_request_queue_time_seconds_sum")
    assert ttft >= 0.002 and e2e >= 12 * 0.002
    assert 0 < queued < ttft < e2e
    assert value(metrics, "llamaserve_prompt_processing_seconds_count") == 1
    # One gap between each pair of sampled tokens: 11 text tokens + EOS = 12 tokens, 11 gaps.
    assert value(metrics, "llamaserve_inter_token_latency_seconds_count") == len(REPLY)
    # TTFT includes the queue wait and the prompt processing.
    assert value(metrics, "llamaserve_time_to_first_token_seconds_sum") > value(
        metrics, "llamaserve_prompt_processing_seconds_sum"
    )
    assert value(metrics, "llamaserve_requests_cancelled_total") == 0


async def test_length_finish_reason(scheduler: Scheduler, metrics: Metrics) -> None:
    fin = await finish(scheduler.submit(request("hi", max_tokens=3)))
    assert fin.reason is FinishReason.LENGTH
    assert value(metrics, "llamaserve_request_success_total", finish_reason="length") == 1
    assert value(metrics, "llamaserve_generation_tokens_total") == 3


async def test_prefix_cache_hits_are_counted(scheduler: Scheduler, metrics: Metrics) -> None:
    await finish(scheduler.submit(request("a shared system prompt, then question one")))
    await finish(scheduler.submit(request("a shared system prompt, then question two")))
    shared = len("a shared system prompt, then question ")
    # The second request reused the first one's slot and its common prefix.
    assert value(metrics, "llamaserve_prompt_cache_hit_tokens_total") == shared


async def test_cancel_frees_the_gauges_and_is_not_a_success(scheduler: Scheduler, metrics: Metrics) -> None:
    handle = scheduler.submit(request("long"))
    async for ev in handle.events():
        assert isinstance(ev, TokenEvent)
        break  # leaving the iterator cancels the request, as a disconnecting client does
    await wait_for(lambda: value(metrics, "llamaserve_requests_cancelled_total") == 1)
    # No other request runs, so no later decode step: the gauges must still drop to zero.
    await wait_for(lambda: value(metrics, "llamaserve_slots_busy") == 0)
    assert value(metrics, "llamaserve_requests_running") == 0
    assert value(metrics, "llamaserve_e2e_request_latency_seconds_count") == 0
    assert value(metrics, "llamaserve_request_success_total", finish_reason="stop") == 0
    assert value(metrics, "llamaserve_generation_tokens_total") >= 1


async def test_gauges_follow_running_and_waiting(engine: FakeEngine, metrics: Metrics) -> None:
    s = Scheduler(engine, max_queue=1, hooks=metrics)
    s.start()
    try:
        running = [s.submit(request("long")), s.submit(request("long"))]
        await wait_for(lambda: value(metrics, "llamaserve_slots_busy") == 2)
        waiting = s.submit(request("long"))
        await wait_for(lambda: value(metrics, "llamaserve_requests_waiting") == 1)
        assert value(metrics, "llamaserve_requests_running") == 2
        assert 0 < value(metrics, "llamaserve_kv_cache_usage_ratio") <= 1
        with pytest.raises(QueueFullError):
            s.submit(request("long"))
        assert value(metrics, "llamaserve_requests_rejected_total", reason="queue_full") == 1
        # Leaving while queued counts as a cancel and empties the queue.
        waiting.cancel()
        await wait_for(lambda: value(metrics, "llamaserve_requests_waiting") == 0)
        for h in running:
            h.cancel()
        await wait_for(lambda: value(metrics, "llamaserve_slots_busy") == 0)
        assert value(metrics, "llamaserve_requests_cancelled_total") == 3
    finally:
        s.stop()


def test_kv_usage_ratio_is_cells_over_all_cells(metrics: Metrics) -> None:
    metrics.step_done(slots_busy=1, waiting=0, kv_cells=512, step_error=False)
    assert value(metrics, "llamaserve_kv_cache_usage_ratio") == 512 / (4096 * 2)


def test_engine_failure_counts_as_failed(metrics: Metrics) -> None:
    metrics.request_finished(FinishReason.ERROR, 5, 2, 0.1)
    assert value(metrics, "llamaserve_requests_failed_total") == 1
    assert value(metrics, "llamaserve_request_success_total", finish_reason="stop") == 0
    assert value(metrics, "llamaserve_requests_cancelled_total") == 0


def test_failed_engine_steps_are_counted(metrics: Metrics) -> None:
    metrics.step_done(slots_busy=0, waiting=0, kv_cells=0, step_error=False)
    assert value(metrics, "llamaserve_engine_step_errors_total") == 0
    metrics.step_done(slots_busy=0, waiting=0, kv_cells=0, step_error=True)
    assert value(metrics, "llamaserve_engine_step_errors_total") == 1


def test_rejections_by_reason(metrics: Metrics) -> None:
    for reason in ("queue_full", "context_overflow", "invalid"):
        assert value(metrics, "llamaserve_requests_rejected_total", reason=reason) == 0  # present before any
    metrics.record_rejected("context_overflow")
    assert value(metrics, "llamaserve_requests_rejected_total", reason="context_overflow") == 1


def test_render_text_by_default_and_openmetrics_on_request(metrics: Metrics) -> None:
    body, ctype = metrics.render(None)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert b"# TYPE llamaserve_time_to_first_token_seconds histogram" in body
    assert not body.rstrip().endswith(b"# EOF")

    body, ctype = metrics.render("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b"# TYPE llamaserve_requests counter" in body


async def test_watched_gauges_are_exact_the_moment_a_request_ends(engine: FakeEngine, metrics: Metrics) -> None:
    # A scrape right after a response must not see the finished request still holding its slot.
    s = Scheduler(engine, max_queue=4, hooks=metrics)
    metrics.watch(s)
    s.start()
    try:
        for _ in range(5):
            handle = s.submit(request("hi"))
            await finish(handle)
            assert value(metrics, "llamaserve_slots_busy") == 0
            assert value(metrics, "llamaserve_requests_running") == 0
            assert value(metrics, "llamaserve_requests_waiting") == 0
    finally:
        s.stop()
