"""Which running sequences to pause so that better-priority requests waiting too long get a slot.

The rule (issue 14 part 5): when every slot is busy and a request of strictly better (lower)
priority has waited longer than ``--preempt-after`` seconds, the running sequence of the worst
priority is paused, and the slot goes to the waiting request. Among running sequences of the
same priority the one holding the fewest KV cells goes first (its prompt plus what it has
generated): it is the cheapest to copy out and back in, and holds the least host memory while
paused; then the one that started last.

Each overdue waiting request, best first, is matched with the worst running sequence not yet
chosen, as long as that one's priority is strictly worse: so a sequence is never paused for a
request of equal or better priority, and never more of them than there are overdue requests
that outrank them. The freed slots go to the best waiting requests, which all outrank every
sequence paused for them (the wait queue orders by priority first).

Pure: the scheduler gives it what it sees, under its lock, and pauses what comes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Running(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def n_cells(self) -> int: ...  # KV cells the sequence holds: prompt + generated

    @property
    def started_at(self) -> float: ...


class Waiting(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def queued_at(self) -> float: ...


R = TypeVar("R", bound=Running)


def choose_victims(
    running: Iterable[R], waiting: Iterable[Waiting], *, now: float, after: float, limit: int
) -> list[R]:
    """The running sequences to pause now (at most ``limit``), worst first; [] when ``after`` <= 0."""
    if after <= 0 or limit <= 0:
        return []
    overdue = sorted(w.priority for w in waiting if now - w.queued_at > after)
    if not overdue:
        return []
    worst_first = sorted(running, key=lambda r: (-r.priority, r.n_cells, -r.started_at))
    victims: list[R] = []
    for prio, victim in zip(overdue, worst_first, strict=False):
        if len(victims) == limit or victim.priority <= prio:
            break
        victims.append(victim)
    return victims
