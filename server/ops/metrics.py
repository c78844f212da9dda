"""Prometheus metrics: one registry per app, fed by scheduler hooks and a few HTTP record calls.

This is the only module that imports ``prometheus_client``. :class:`Metrics` owns
a private :class:`CollectorRegistry` (so tests can build many apps in one
process), implements :class:`server.scheduler.SchedulerHooks` for everything the
engine thread sees, and offers ``record_*`` methods for what only the HTTP layer
sees (status codes, requests refused before they reach the scheduler).

Counting rules, so the numbers add up for an operator:

- every *sequence* the scheduler runs counts once (a request with ``n=3`` is
  three sequences); ``requests_total`` counts HTTP requests.
- a sequence ends exactly once: ``request_success_total{finish_reason}``,
  ``requests_cancelled_total`` (the client left) or ``requests_failed_total``.
- the latency and size histograms of whole requests observe successful
  sequences only, so abandoned requests do not drag the percentiles down.
"""

from __future__ import annotations

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
from prometheus_client.exposition import choose_encoder

from server.engine.base import FinishReason, ModelInfo

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
REJECT_REASONS = ("queue_full", "context_overflow", "invalid")


class SchedulerView(Protocol):
    """What :meth:`Metrics.watch` reads from the scheduler; both are safe to read from any thread."""

    @property
    def busy(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class Metrics:
    """Every llamaserve metric, in its own registry. Safe to call from any thread."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            # Standard names (process_resident_memory_bytes, ...), so stock dashboards work.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        p = PREFIX

        self.time_to_first_token = Histogram(
            f"{p}_time_to_first_token_seconds",
            "Time from arrival to the first generated token, queueing and prompt processing included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            f"{p}_inter_token_latency_seconds",
            "Time between consecutive generated tokens of one sequence (observed per token).",
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e_request_latency = Histogram(
            f"{p}_e2e_request_latency_seconds",
            "Time from arrival to the last token of a successful sequence.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.request_queue_time = Histogram(
            f"{p}_request_queue_time_seconds",
            "Time a sequence waited for a free slot.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.prompt_processing = Histogram(
            f"{p}_prompt_processing_seconds",
            "Time from taking a slot to the first token: prefill of the uncached prompt.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_prompt_tokens = Histogram(
            f"{p}_request_prompt_tokens",
            "Prompt length of successful sequences, in tokens.",
            buckets=TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        self.request_generation_tokens = Histogram(
            f"{p}_request_generation_tokens",
            "Generated length of successful sequences, in tokens.",
            buckets=TOKEN_COUNT_BUCKETS,
            registry=r,
        )

        self.requests = Counter(
            f"{p}_requests",
            "HTTP requests answered, by route template and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_success = Counter(
            f"{p}_request_success",
            "Sequences that finished normally, by finish reason.",
            ["finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{p}_prompt_tokens", "Prompt tokens of sequences that took a slot, cached ones included.", registry=r
        )
        self.generation_tokens = Counter(f"{p}_generation_tokens", "Tokens generated.", registry=r)
        self.prompt_cache_hit_tokens = Counter(
            f"{p}_prompt_cache_hit_tokens",
            "Prompt tokens reused from a slot's KV cache instead of recomputed.",
            registry=r,
        )
        self.requests_cancelled = Counter(
            f"{p}_requests_cancelled", "Sequences cancelled because the client disconnected.", registry=r
        )
        self.requests_failed = Counter(
            f"{p}_requests_failed", "Sequences ended by an error: an engine failure or the request timeout.", registry=r
        )
        self.engine_step_errors = Counter(
            f"{p}_engine_step_errors",
            "Engine steps that failed; their requests failed and the llama.cpp context was recreated.",
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
        # The scheduler ends sequences with stop or length; tool calls are found later, in the text.
        for finish in (FinishReason.STOP, FinishReason.LENGTH):
            self.request_success.labels(finish_reason=finish.value)

        self.requests_running = Gauge(
            f"{p}_requests_running", "Sequences holding a slot (prefilling or generating).", registry=r
        )
        self.requests_waiting = Gauge(f"{p}_requests_waiting", "Sequences waiting for a free slot.", registry=r)
        # Not "slots_total": Prometheus reserves the _total suffix for counters (promtool rejects it).
        self.slots = Gauge(f"{p}_slots", "Sequence slots decoded together (--parallel).", registry=r)
        self.slots_busy = Gauge(f"{p}_slots_busy", "Slots holding a running sequence.", registry=r)
        self.kv_cache_usage_ratio = Gauge(
            f"{p}_kv_cache_usage_ratio",
            "KV cache cells in use (running sequences and kept prefixes) / all cells.",
            registry=r,
        )
        self.model_info = Gauge(
            f"{p}_model_info",
            "The served model (value 1).",
            ["model", "quantization", "n_ctx", "n_parallel"],
            registry=r,
        )
        self._kv_cells_total = 0

    # ---- wiring -----------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        """Record the loaded model; called once the engine exists."""
        self.model_info.clear()
        self.model_info.labels(
            model=info.id, quantization=info.quantization, n_ctx=str(info.n_ctx_per_seq), n_parallel=str(info.n_slots)
        ).set(1)
        self.slots.set(info.n_slots)
        self._kv_cells_total = info.n_ctx_per_seq * info.n_slots

    def watch(self, scheduler: SchedulerView) -> None:
        """Read the slot and queue gauges from the scheduler at scrape time.

        The engine thread reports them after each pass (:meth:`step_done`), but a scrape that
        lands between a request's end and that report would see it still running.
        """
        self.requests_running.set_function(lambda: scheduler.busy)
        self.slots_busy.set_function(lambda: scheduler.busy)
        self.requests_waiting.set_function(lambda: scheduler.waiting)

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

    # ---- SchedulerHooks ---------------------------------------------------------------------

    def request_queued(self) -> None:
        # step_done sets the exact value at the next engine pass; this makes the rise visible now.
        self.requests_waiting.inc()

    def request_rejected(self, reason: str) -> None:
        self.record_rejected(reason)

    def request_started(self, queue_seconds: float, prompt_tokens: int, cached_tokens: int) -> None:
        self.request_queue_time.observe(queue_seconds)
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
            self.request_success.labels(finish_reason=reason.value).inc()
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
        self.requests_running.set(slots_busy)
        self.slots_busy.set(slots_busy)
        self.requests_waiting.set(waiting)
        if self._kv_cells_total:
            self.kv_cache_usage_ratio.set(min(1.0, kv_cells / self._kv_cells_total))
