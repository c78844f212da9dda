"""Prometheus metrics: one registry per app, fed by scheduler hooks and a few HTTP record calls.

This package is the only one that imports ``prometheus_client``. :class:`Metrics` owns
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

from server.ops.metrics.model import ModelMetrics
from server.ops.metrics.names import SchedulerView, priority_class
from server.ops.metrics.registry import Metrics

__all__ = ["Metrics", "ModelMetrics", "SchedulerView", "priority_class"]
