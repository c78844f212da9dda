"""What the prompt cache counts, read by the metrics at scrape time (the engine never imports ops)."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field, replace

# Restoring is a memcpy into the KV cells (plus a file read from disk): sub-millisecond for a
# small model, up to seconds for a long prompt of a large one read from a slow disk.
RESTORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TIERS = ("ram", "disk")


@dataclass(frozen=True)
class TierStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one engine's prompt cache; ``restore_counts[i]`` counts restores <= ``RESTORE_BUCKETS[i]``
    (not cumulative; the last one counts the rest)."""

    ram: TierStats = TierStats()
    disk: TierStats = TierStats()
    restored_tokens: int = 0
    corrupt_files: int = 0
    restore_counts: tuple[int, ...] = (0,) * (len(RESTORE_BUCKETS) + 1)
    restore_seconds_sum: float = 0.0

    def tier(self, name: str) -> TierStats:
        return self.ram if name == "ram" else self.disk


@dataclass
class StatsRecorder:
    """The live counters: updated by the engine thread and the disk writer, snapshotted by a scrape."""

    _stats: CacheStats = field(default_factory=CacheStats)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> CacheStats:
        return self._stats  # frozen: a scrape holds a consistent copy

    def count(self, tier: str, *, hits: int = 0, misses: int = 0, evictions: int = 0) -> None:
        with self._lock:
            t = self._stats.tier(tier)
            t = replace(t, hits=t.hits + hits, misses=t.misses + misses, evictions=t.evictions + evictions)
            self._stats = _with_tier(self._stats, tier, t)

    def usage(self, tier: str, *, n_bytes: int, entries: int) -> None:
        with self._lock:
            t = replace(self._stats.tier(tier), bytes=n_bytes, entries=entries)
            self._stats = _with_tier(self._stats, tier, t)

    def corrupt(self) -> None:
        with self._lock:
            self._stats = replace(self._stats, corrupt_files=self._stats.corrupt_files + 1)

    def restored(self, n_tokens: int, seconds: float) -> None:
        with self._lock:
            s = self._stats
            counts = list(s.restore_counts)
            counts[bisect.bisect_left(RESTORE_BUCKETS, seconds)] += 1
            self._stats = replace(
                s,
                restored_tokens=s.restored_tokens + n_tokens,
                restore_counts=tuple(counts),
                restore_seconds_sum=s.restore_seconds_sum + seconds,
            )


def _with_tier(stats: CacheStats, tier: str, t: TierStats) -> CacheStats:
    return replace(stats, ram=t) if tier == "ram" else replace(stats, disk=t)
