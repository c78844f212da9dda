"""Series read at scrape time from the schedulers and engines: waiting per key, the prompt cache;
and from the response store: responses stored and their bytes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.prompt_cache.stats import RESTORE_BUCKETS, TIERS, CacheStats
from server.ops.metrics.names import PREFIX, SchedulerView

log = logging.getLogger(__name__)


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


class StoreView(Protocol):
    """What the stored-responses gauges read at scrape time (a :class:`server.state.ResponseStore`)."""

    def count(self) -> int: ...

    def bytes_used(self) -> int: ...


class StoredResponsesCollector(Collector):
    """``responses_stored`` and ``responses_stored_bytes``, asked of the store at each scrape.

    Read, not kept: the bounds and other processes' restarts change the numbers without a hook
    to tell. No store (before the app starts, after it stops): the families have no sample.
    """

    def __init__(self) -> None:
        self._store: StoreView | None = None
        self._lock = threading.Lock()

    def watch(self, store: StoreView | None) -> None:
        with self._lock:
            self._store = store

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            store = self._store
        values = None
        if store is not None:
            try:
                values = (store.count(), store.bytes_used())
            except Exception:
                # A store that fails (a full disk, closed mid-scrape) must not take /metrics down with it.
                log.warning("could not read the response store for /metrics", exc_info=True)
        return self._families(values)

    @staticmethod
    def _families(values: tuple[int, int] | None) -> list[Metric]:
        stored = GaugeMetricFamily(f"{PREFIX}_responses_stored", "Responses kept for the Responses API (not expired).")
        size = GaugeMetricFamily(
            f"{PREFIX}_responses_stored_bytes",
            "Bytes of JSON the stored responses hold (what --responses-max-bytes bounds).",
        )
        if values is not None:
            stored.add_metric([], values[0])
            size.add_metric([], values[1])
        return [stored, size]
