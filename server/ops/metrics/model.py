"""One model's view of the metrics: the scheduler hooks of its scheduler, every series labelled ``model``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    Gauge,
)

from server.engine.base import FinishReason, ModelInfo
from server.ops.metrics.collectors import CacheStatsSource
from server.ops.metrics.names import PRIORITY_CLASSES, SUCCESS_REASONS, SchedulerView, priority_class

if TYPE_CHECKING:
    from server.ops.metrics.registry import Metrics


@dataclass
class _Gauges:
    """One loaded model's gauge series; dropped whole when the model is unloaded."""

    running: Gauge
    waiting: Gauge
    slots: Gauge
    slots_busy: Gauge
    kv_cache_usage_ratio: Gauge


class ModelMetrics:
    """The series of one model, labelled ``model=<id>``; the :class:`SchedulerHooks` of its scheduler.

    Counters and histograms are bound once and live as long as the app. The gauges exist
    while the model is loaded: from :meth:`set_model` or :meth:`watch` until :meth:`forget`.
    A scheduler still winding down after :meth:`forget` writes to detached series, which
    no scrape sees, so an unloaded model cannot come back as a stale gauge.
    """

    def __init__(self, metrics: Metrics, model_id: str) -> None:
        self.id = model_id
        self._metrics = metrics
        m = metrics
        self.time_to_first_token = m.time_to_first_token.labels(model_id)
        self.inter_token_latency = m.inter_token_latency.labels(model_id)
        self.e2e_request_latency = m.e2e_request_latency.labels(model_id)
        self.request_queue_time = {c: m.request_queue_time.labels(model_id, c) for c in PRIORITY_CLASSES}
        self.prompt_processing = m.prompt_processing.labels(model_id)
        self.request_prompt_tokens = m.request_prompt_tokens.labels(model_id)
        self.request_generation_tokens = m.request_generation_tokens.labels(model_id)
        self.prompt_tokens = m.prompt_tokens.labels(model_id)
        self.generation_tokens = m.generation_tokens.labels(model_id)
        self.prompt_cache_hit_tokens = m.prompt_cache_hit_tokens.labels(model_id)
        self.requests_cancelled = m.requests_cancelled.labels(model_id)
        self.requests_failed = m.requests_failed.labels(model_id)
        self.engine_step_errors = m.engine_step_errors.labels(model_id)
        self.preemptions = m.preemptions.labels(model_id)
        # The scheduler ends sequences with stop or length; tool calls are found later, in the text.
        # Both present from the start at 0, so rate() and alerts see the first one.
        for finish in (FinishReason.STOP, FinishReason.LENGTH):
            m.request_success.labels(model_id, finish.value)
        self._lock = threading.Lock()
        self._gauges: _Gauges | None = None
        self._info_labels: tuple[str, ...] | None = None
        self._rpc_endpoints: tuple[str, ...] = ()
        self._kv_cells_total = 0
        self._watched = False  # the slot and queue gauges read a scheduler at scrape time

    # ---- wiring -----------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        """Record the loaded model: its info series, pool size and KV cache size."""
        # devices: how many buffers hold the weights (1 on one machine; the CPU plus each RPC worker when split).
        labels = (
            self.id,
            info.quantization,
            str(info.n_ctx_per_seq),
            str(info.n_slots),
            str(max(1, len(info.placement))),
        )
        with self._lock:
            self._set_rpc(info)
            gauges = self._live()
            if self._info_labels is not None and self._info_labels != labels:
                self._metrics.model_info.remove(*self._info_labels)
            self._metrics.model_info.labels(*labels).set(1)
            self._info_labels = labels
            gauges.slots.set(info.n_slots)
            self._kv_cells_total = info.n_ctx_per_seq * info.n_slots

    def watch(self, scheduler: SchedulerView) -> None:
        """Read the slot and queue gauges from ``scheduler`` at scrape time.

        The engine thread reports them after each pass (:meth:`step_done`), but a scrape that
        lands between a request's end and that report would see it still running.
        """
        with self._lock:
            gauges = self._live()
            gauges.running.set_function(lambda: scheduler.busy)
            gauges.slots_busy.set_function(lambda: scheduler.busy)
            gauges.waiting.set_function(lambda: scheduler.waiting)
            self._watched = True
        self._metrics.waiting_by_key.watch(self.id, scheduler)

    def watch_cache(self, source: CacheStatsSource) -> None:
        """Read the prompt cache series from ``source`` (an engine's ``cache_stats``) at scrape time."""
        self._metrics.prompt_cache.watch(self.id, source)

    def forget(self) -> None:
        """The model was unloaded: drop its gauges, info and prompt cache series; other counters stay."""
        self._metrics.prompt_cache.forget(self.id)
        with self._lock:
            if self._gauges is None:
                return
            self._gauges = None
            self._watched = False
            m = self._metrics
            m.waiting_by_key.forget(self.id)
            for gauge in (m.requests_running, m.requests_waiting, m.slots, m.slots_busy, m.kv_cache_usage_ratio):
                gauge.remove(self.id)
            if self._info_labels is not None:
                m.model_info.remove(*self._info_labels)
                self._info_labels = None
            for endpoint in self._rpc_endpoints:
                m.rpc_worker_up.remove(self.id, endpoint)
                m.rpc_worker_model_bytes.remove(self.id, endpoint)
            self._rpc_endpoints = ()
            self._kv_cells_total = 0

    def _set_rpc(self, info: ModelInfo) -> None:
        m = self._metrics
        for endpoint in info.rpc_endpoints:
            placed = sum(size for buffer, size in info.placement.items() if buffer.endswith(f"[{endpoint}]"))
            m.rpc_worker_up.labels(self.id, endpoint).set(1)
            m.rpc_worker_model_bytes.labels(self.id, endpoint).set(placed)
        self._rpc_endpoints = info.rpc_endpoints

    def _live(self) -> _Gauges:
        """This model's gauge series, made (at 0) if the model had none; call with the lock held."""
        if self._gauges is None:
            m = self._metrics
            self._gauges = _Gauges(
                running=m.requests_running.labels(self.id),
                waiting=m.requests_waiting.labels(self.id),
                slots=m.slots.labels(self.id),
                slots_busy=m.slots_busy.labels(self.id),
                kv_cache_usage_ratio=m.kv_cache_usage_ratio.labels(self.id),
            )
        return self._gauges

    # ---- SchedulerHooks ---------------------------------------------------------------------

    def request_queued(self) -> None:
        # step_done sets the exact value at the next engine pass; this makes the rise visible now.
        gauges = self._gauges
        if gauges is not None:
            gauges.waiting.inc()

    def request_rejected(self, reason: str) -> None:
        self._metrics.record_rejected(reason)

    def request_started(self, queue_seconds: float, prompt_tokens: int, cached_tokens: int, priority: int) -> None:
        self.request_queue_time[priority_class(priority)].observe(queue_seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_cache_hit_tokens.inc(cached_tokens)

    def first_token(self, ttft_seconds: float, prompt_seconds: float) -> None:
        self.time_to_first_token.observe(ttft_seconds)
        self.prompt_processing.observe(prompt_seconds)

    def token(self, inter_token_seconds: float) -> None:
        self.inter_token_latency.observe(inter_token_seconds)

    def request_preempted(self) -> None:
        self.preemptions.inc()

    def request_finished(
        self, reason: FinishReason, prompt_tokens: int, completion_tokens: int, e2e_seconds: float
    ) -> None:
        self.generation_tokens.inc(completion_tokens)
        if reason in SUCCESS_REASONS:
            self._metrics.request_success.labels(self.id, reason.value).inc()
            self.e2e_request_latency.observe(e2e_seconds)
            self.request_prompt_tokens.observe(prompt_tokens)
            self.request_generation_tokens.observe(completion_tokens)
        elif reason is FinishReason.CANCELLED:
            self.requests_cancelled.inc()
        else:
            self.requests_failed.inc()

    def step_done(self, slots_busy: int, waiting: int, kv_cells: int, step_error: bool) -> None:
        if step_error:
            self.engine_step_errors.inc()
        # Read once: a concurrent forget() leaves these detached, so writing them is harmless.
        gauges, cells_total = self._gauges, self._kv_cells_total
        if gauges is None:
            return
        if not self._watched:  # a watched gauge ignores what is set: spare the engine thread the writes
            gauges.running.set(slots_busy)
            gauges.slots_busy.set(slots_busy)
            gauges.waiting.set(waiting)
        if cells_total:
            gauges.kv_cache_usage_ratio.set(min(1.0, kv_cells / cells_total))
