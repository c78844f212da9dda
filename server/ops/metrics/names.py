"""Metric names, buckets and label values every part of :mod:`server.ops.metrics` shares."""

from __future__ import annotations

from typing import Protocol

from server.engine.base import FinishReason

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
