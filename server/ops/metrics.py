"""Prometheus metrics: one registry per app, fed by scheduler hooks and a few HTTP record calls.

This is the only module that imports ``prometheus_client``. :class:`Metrics` owns
a private :class:`CollectorRegistry` (so tests can build many apps in one
process) and offers ``record_*`` methods for what only the HTTP layer sees
(status codes, requests refused before they reach the scheduler). Everything a
scheduler sees goes through the :class:`ModelMetrics` of its model
(:meth:`Metrics.model`), which implements
:class:`server.runtime.events.SchedulerHooks` and labels every series it feeds
with ``model``, so several models served by one process stay apart.

Counting rules, so the numbers add up for an operator:

- every *sequence* the scheduler runs counts once (a request with ``n=3`` is
  three sequences); ``requests_total`` counts HTTP requests.
- a sequence ends exactly once: ``request_success_total{finish_reason}``,
  ``requests_cancelled_total`` (the client left) or ``requests_failed_total``.
- the latency and size histograms of whole requests observe successful
  sequences only, so abandoned requests do not drag the percentiles down.
- HTTP requests and rejections carry no ``model`` label: many are refused
  before a model is known (a malformed body, an unknown model name, a 401).
  A scheduler's ``queue_full`` refusals join the same counter, so one series
  per reason counts every refusal.
- an unloaded model's gauges leave the exposition (:meth:`ModelMetrics.forget`);
  its counters and histograms stay, since they are cumulative.
- the queue time is labelled by priority class (``high`` < 0 = ``normal`` < ``low``), never
  by the client's number itself, so a client cannot mint series; the per-key waiting gauge
  names a key by its short hash (:func:`server.api.security.key_id`), never by the key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from server.engine.base import FinishReason, ModelInfo
from server.engine.prompt_cache.stats import RESTORE_BUCKETS, TIERS, CacheStats

PREFIX = "llamaserve"

# One bucket set has to serve a 135M model on two CPU cores and a 70B model on a GPU, so the
# ranges are wide and roughly log-spaced.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
TOKEN_COUNT_BUCKETS = tuple(float(2**i) for i in range(18))  # 1 .. 131072

SUCCESS_REASONS = frozenset({FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS})
REJECT_REASONS = ("queue_full", "key_queue_full", "context_overflow", "invalid")
PRIORITY_CLASSES = ("high", "normal", "low")


def priority_class(priority: int) -> str:
    """The label of a request priority: a bounded set, whatever numbers clients send."""
    return "high" if priority < 0 else "normal" if priority == 0 else "low"


class SchedulerView(Protocol):
    """What :meth:`ModelMetrics.watch` reads at scrape time; both are safe to read from any thread."""

    @property
    def busy(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def waiting_by_key(self) -> dict[str, int]: ...


class _WaitingByKey(Collector):
    """``requests_waiting_by_key{model, key}``, read from each watched scheduler at scrape time.

    A collector rather than a labelled gauge: the keys come and go with the queue, and a key
    whose requests all started must read 0 (or vanish), not keep its last value.
    """

    NAME = f"{PREFIX}_requests_waiting_by_key"

    def __init__(self) -> None:
        self._views: dict[str, SchedulerView] = {}
        self._lock = threading.Lock()

    def watch(self, model_id: str, scheduler: SchedulerView) -> None:
        with self._lock:
            self._views[model_id] = scheduler

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._views.pop(model_id, None)

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        with self._lock:
            views = list(self._views.items())
        for model_id, scheduler in views:
            for key, n in sorted(scheduler.waiting_by_key().items()):
                family.add_metric([model_id, key or "none"], n)
        return [family]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.NAME,
            "Sequences waiting for a slot, per API key (its short hash; 'none' = no key).",
            labels=["model", "key"],
        )


class Metrics:
    """Every llamaserve metric, in its own registry. Safe to call from any thread."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            # Standard names (process_resident_memory_bytes, ...), so stock dashboards work.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._declare_histograms(self.registry)
        self._declare_counters(self.registry)
        self._declare_gauges(self.registry)
        self.waiting_by_key = _WaitingByKey()
        self.registry.register(self.waiting_by_key)
        self._models: dict[str, ModelMetrics] = {}
        self._models_lock = threading.Lock()
        self.prompt_cache = PromptCacheCollector()
        self.registry.register(self.prompt_cache)

    # Declarations only, grouped by kind; every per-model series carries the "model" label.

    def _declare_histograms(self, r: CollectorRegistry) -> None:
        p, m = PREFIX, ["model"]
        self.time_to_first_token = Histogram(
            f"{p}_time_to_first_token_seconds",
            "Time from arrival to the first generated token, queueing and prompt processing included.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            f"{p}_inter_token_latency_seconds",
            "Time between consecutive generated tokens of one sequence (observed per token).",
            m,
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e_request_latency = Histogram(
            f"{p}_e2e_request_latency_seconds",
            "Time from arrival to the last token of a successful sequence.",
            m,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.request_queue_time = Histogram(
            f"{p}_request_queue_time_seconds",
            "Time a sequence waited for a free slot, by priority class (high < 0, normal = 0, low > 0).",
            ["model", "priority"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.prompt_processing = Histogram(
            f"{p}_prompt_processing_seconds",
            "Time from taking a slot to the first token: prefill of the uncached prompt.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_prompt_tokens = Histogram(
            f"{p}_request_prompt_tokens",
            "Prompt length of successful sequences, in tokens.",
            m,
            buckets=TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        self.request_generation_tokens = Histogram(
            f"{p}_request_generation_tokens",
            "Generated length of successful sequences, in tokens.",
            m,
            buckets=TOKEN_COUNT_BUCKETS,
            registry=r,
        )

    def _declare_counters(self, r: CollectorRegistry) -> None:
        p, m = PREFIX, ["model"]
        self.requests = Counter(
            f"{p}_requests",
            "HTTP requests answered, by route template and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_success = Counter(
            f"{p}_request_success",
            "Sequences that finished normally, by finish reason.",
            ["model", "finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{p}_prompt_tokens", "Prompt tokens of sequences that took a slot, cached ones included.", m, registry=r
        )
        self.generation_tokens = Counter(f"{p}_generation_tokens", "Tokens generated.", m, registry=r)
        self.prompt_cache_hit_tokens = Counter(
            f"{p}_prompt_cache_hit_tokens",
            "Prompt tokens reused instead of recomputed: from a slot's KV cells or restored from the prompt cache.",
            m,
            registry=r,
        )
        self.requests_cancelled = Counter(
            f"{p}_requests_cancelled", "Sequences cancelled because the client disconnected.", m, registry=r
        )
        self.requests_failed = Counter(
            f"{p}_requests_failed",
            "Sequences ended by an error: an engine failure or the request timeout.",
            m,
            registry=r,
        )
        self.engine_step_errors = Counter(
            f"{p}_engine_step_errors",
            "Engine steps that failed; their requests failed and the llama.cpp context was recreated.",
            m,
            registry=r,
        )
        self.requests_rejected = Counter(
            f"{p}_requests_rejected",
            "Requests refused before generation: queue_full (429), context_overflow and invalid (400).",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            # Present from the start at 0, so rate() and alerts see the first rejection.
            self.requests_rejected.labels(reason=reason)

    def _declare_gauges(self, r: CollectorRegistry) -> None:
        p, m = PREFIX, ["model"]
        self.requests_running = Gauge(
            f"{p}_requests_running", "Sequences holding a slot (prefilling or generating).", m, registry=r
        )
        self.requests_waiting = Gauge(f"{p}_requests_waiting", "Sequences waiting for a free slot.", m, registry=r)
        # Not "slots_total": Prometheus reserves the _total suffix for counters (promtool rejects it).
        self.slots = Gauge(f"{p}_slots", "Sequence slots decoded together (--parallel).", m, registry=r)
        self.slots_busy = Gauge(f"{p}_slots_busy", "Slots holding a running sequence.", m, registry=r)
        self.kv_cache_usage_ratio = Gauge(
            f"{p}_kv_cache_usage_ratio",
            "KV cache cells in use (running sequences and kept prefixes) / all cells.",
            m,
            registry=r,
        )
        self.model_info = Gauge(
            f"{p}_model_info",
            "A loaded model (value 1).",
            ["model", "quantization", "n_ctx", "n_parallel", "devices"],
            registry=r,
        )
        self.rpc_worker_up = Gauge(
            f"{p}_rpc_worker_up",
            "1 while the RPC worker holds this model's layers (the head exits when one is lost).",
            ["model", "endpoint"],
            registry=r,
        )
        self.rpc_worker_model_bytes = Gauge(
            f"{p}_rpc_worker_model_bytes",
            "Bytes of the model's weights on the RPC worker.",
            ["model", "endpoint"],
            registry=r,
        )

    def model(self, model_id: str) -> ModelMetrics:
        """The per-model view for ``model_id``: made on the first call, the same object after."""
        with self._models_lock:
            view = self._models.get(model_id)
            if view is None:
                view = self._models[model_id] = ModelMetrics(self, model_id)
            return view

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type: OpenMetrics if ``accept`` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # ---- HTTP layer -------------------------------------------------------------------------

    def record_http_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def record_rejected(self, reason: str) -> None:
        """A request refused before generation; ``reason`` is one of :data:`REJECT_REASONS`."""
        self.requests_rejected.labels(reason=reason).inc()


CacheStatsSource = Callable[[], CacheStats | None]


class PromptCacheCollector(Collector):
    """The prompt cache series, read from each engine's counters at scrape time.

    They belong to the engine: a model unloaded takes them out of the exposition, and a model
    loaded again counts from 0 (a counter reset, which ``rate()`` expects).
    """

    def __init__(self) -> None:
        self._sources: dict[str, CacheStatsSource] = {}
        self._lock = threading.Lock()

    def watch(self, model_id: str, source: CacheStatsSource) -> None:
        with self._lock:
            self._sources[model_id] = source

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._sources.pop(model_id, None)

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            sources = dict(self._sources)
        return self._families({m: s for m, source in sources.items() if (s := source()) is not None})

    @staticmethod
    def _families(stats: dict[str, CacheStats]) -> list[Metric]:
        p, mt = f"{PREFIX}_prompt_cache", ["model", "tier"]
        hits = CounterMetricFamily(f"{p}_hits", "Prompts whose prefix was restored from this tier.", labels=mt)
        misses = CounterMetricFamily(
            f"{p}_misses", "Prompts this tier was asked for and held no longer prefix of.", labels=mt
        )
        evictions = CounterMetricFamily(f"{p}_evictions", "States dropped from this tier to make room.", labels=mt)
        used = GaugeMetricFamily(f"{p}_bytes", "Bytes of saved states held in this tier.", labels=mt)
        entries = GaugeMetricFamily(f"{p}_entries", "Saved states held in this tier.", labels=mt)
        corrupt = CounterMetricFamily(
            f"{p}_corrupt_files", "Cache files found truncated or corrupt, deleted unread.", labels=["model"]
        )
        restore = HistogramMetricFamily(
            f"{p}_restore_seconds",
            "Time to restore a cached prefix into a slot (disk read included).",
            labels=["model"],
        )
        for model, s in stats.items():
            for tier in TIERS:
                t = s.tier(tier)
                hits.add_metric([model, tier], t.hits)
                misses.add_metric([model, tier], t.misses)
                evictions.add_metric([model, tier], t.evictions)
                used.add_metric([model, tier], t.bytes)
                entries.add_metric([model, tier], t.entries)
            corrupt.add_metric([model], s.corrupt_files)
            cumulative, buckets = 0, []
            for bound, n in zip((*RESTORE_BUCKETS, float("inf")), s.restore_counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            restore.add_metric([model], buckets, s.restore_seconds_sum)
        return [hits, misses, evictions, used, entries, corrupt, restore]


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
        # The scheduler ends sequences with stop or length; tool calls are found later, in the text.
        # Both present from the start at 0, so rate() and alerts see the first one.
        for finish in (FinishReason.STOP, FinishReason.LENGTH):
            m.request_success.labels(model_id, finish.value)
        self._lock = threading.Lock()
        self._gauges: _Gauges | None = None
        self._info_labels: tuple[str, ...] | None = None
        self._rpc_endpoints: tuple[str, ...] = ()
        self._kv_cells_total = 0

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
        gauges.running.set(slots_busy)
        gauges.slots_busy.set(slots_busy)
        gauges.waiting.set(waiting)
        if cells_total:
            gauges.kv_cache_usage_ratio.set(min(1.0, kv_cells / cells_total))
