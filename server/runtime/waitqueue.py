"""The wait queue: priority first, then weighted round robin across API keys, then arrival.

Which waiting request takes the next free slot:

1. the best (lowest) ``priority`` among every key's oldest-best request;
2. among the keys that have a request of that priority, the one whose share is furthest
   behind: each key has a *pass* that grows by ``1 / weight`` each time one of its requests
   is taken (stride scheduling), so over time a key of weight 2 is served twice as often as
   one of weight 1, whatever either has queued;
3. within a key, arrival order (ties of priority go by arrival, as vLLM orders them).

A key that had nothing waiting joins at the pass of the keys being served now, not at its
old pass: an idle key banks no credit it could later use to starve the others. Requests
without an API key share one key, ``""``.

Not thread-safe: the scheduler calls it under its condition lock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def key_id(self) -> str: ...


T = TypeVar("T", bound=Queued)


@dataclass
class _Key(Generic[T]):
    weight: float
    pass_: float = 0.0
    heap: list[tuple[int, int, T]] = field(default_factory=list)  # (priority, arrival, item)


class WaitQueue(Generic[T]):
    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self._weights = dict(weights or {})
        self._keys: dict[str, _Key[T]] = {}
        self._arrival = itertools.count()
        self._len = 0
        self._now = 0.0  # the pass of the key served last: where the round robin stands

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Every waiting item, in no particular order."""
        for k in self._keys.values():
            for _, _, item in k.heap:
                yield item

    def count(self, key_id: str) -> int:
        k = self._keys.get(key_id)
        return len(k.heap) if k is not None else 0

    def counts(self) -> dict[str, int]:
        """Waiting items per key, for keys that have any."""
        return {key: len(k.heap) for key, k in self._keys.items() if k.heap}

    def push(self, item: T) -> None:
        k = self._keys.get(item.key_id)
        if k is None:
            k = self._keys[item.key_id] = _Key(weight=max(self._weights.get(item.key_id, 1.0), 1e-6))
        if not k.heap:
            k.pass_ = max(k.pass_, self._now)
        heapq.heappush(k.heap, (item.priority, next(self._arrival), item))
        self._len += 1

    def pop(self) -> T:
        """The item that goes next (see the module docstring); IndexError when empty."""
        best: tuple[int, float, int] | None = None
        chosen: _Key[T] | None = None
        for k in self._keys.values():
            if k.heap:
                prio, arrival, _ = k.heap[0]
                rank = (prio, k.pass_, arrival)
                if best is None or rank < best:
                    best, chosen = rank, k
        if chosen is None:
            raise IndexError("pop from an empty wait queue")
        _, _, item = heapq.heappop(chosen.heap)
        self._now = chosen.pass_
        chosen.pass_ += 1.0 / chosen.weight
        self._len -= 1
        return item

    def ranked(self) -> list[T]:
        """Every waiting item in the order :meth:`pop` would take them if nothing else arrived.

        For queue positions: it replays the pops on copies, O(n log n), the queue is untouched.
        """
        heaps = {key: sorted(k.heap, key=lambda e: e[:2]) for key, k in self._keys.items() if k.heap}
        passes = {key: self._keys[key].pass_ for key in heaps}
        heads = dict.fromkeys(heaps, 0)
        out: list[T] = []
        while heaps:
            key = min(heaps, key=lambda k: (heaps[k][heads[k]][0], passes[k], heaps[k][heads[k]][1]))
            out.append(heaps[key][heads[key]][2])
            heads[key] += 1
            passes[key] += 1.0 / self._keys[key].weight
            if heads[key] == len(heaps[key]):
                del heaps[key]
        return out

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out every item ``predicate`` holds for (cancelled, timed out); return them."""
        removed: list[T] = []
        for k in self._keys.values():
            kept = [e for e in k.heap if not predicate(e[2])]
            if len(kept) != len(k.heap):
                removed += [e[2] for e in k.heap if predicate(e[2])]
                heapq.heapify(kept)
                k.heap = kept
        self._len -= len(removed)
        return removed

    def clear(self) -> list[T]:
        return self.remove_if(lambda _: True)
