"""llama.cpp compute off the engine thread, run in a thread of its own that ends with it.

llama.cpp's CPU backend computes a graph with OpenMP, and libgomp keeps a pool of worker threads
for every thread that ever started a parallel region, for as long as that thread lives. Once the
threads it manages outnumber the CPUs, libgomp stops spinning at barriers and sleeps on a futex at
each of the hundreds of barriers of one decode. So a single decode from a long-lived worker thread
(``asyncio.to_thread``'s pool) left a second pool behind for good, and from then on every step of
the engine thread was slower: measured on 2 cores, about 200 thread switches per decode step
instead of none, and 20% fewer tokens/s at one stream, after one ``/v1/embeddings`` request. A
thread that ends frees its pool, and the engine's barriers spin again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_own_thread(work: Callable[[], T], *, name: str) -> T:
    """``work()`` in a new thread that has ended when this returns (or raises what it raised)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
