"""The app's :class:`Metrics`: its own registry, every metric family, the HTTP-layer records."""

from __future__ import annotations

import threading

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

from server.ops.metrics.collectors import PromptCacheCollector, StoredResponsesCollector, _WaitingByKey
from server.ops.metrics.model import ModelMetrics
from server.ops.metrics.names import (
    E2E_BUCKETS,
    INTER_TOKEN_BUCKETS,
    LATENCY_BUCKETS,
    PREFIX,
    QUEUE_BUCKETS,
    REJECT_REASONS,
    TOKEN_COUNT_BUCKETS,
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
        self.stored_responses = StoredResponsesCollector()  # .watch(store) while the app runs
        self.registry.register(self.stored_responses)

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
