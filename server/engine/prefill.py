"""How one step's prefill budget is shared among the prompts waiting for it.

First come, first served (what llama.cpp's server does) lets one long prompt hold the
whole budget for seconds while a short request that arrived after it waits for its
first token. Fair sharing splits the room a step has left after the generating slots'
one token each among every prefilling prompt, equally, with what a short prompt does not
need going to the others (water-filling). A prompt never gets less than ``min_chunk``
tokens a step unless it needs less: when the room does not stretch to every prompt at
that size, the prompts take turns (round robin by step), so throughput never collapses
into many tiny chunks. Room the chosen prompts cannot use goes to the others, so a step
is as full as first-come-first-served would make it.

Pure arithmetic, shared by the llama.cpp engine's batch planner and the fake engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MIN_CHUNK = 64


@dataclass
class PrefillPolicy:
    fair: bool = True
    min_chunk: int = DEFAULT_MIN_CHUNK
    turn: int = 0  # advances once per step that prefills: whose go it is when not all fit

    def shares(self, room: int, needs: Sequence[int]) -> list[int]:
        """Tokens each prompt (in ``needs``' order, oldest first) takes this step; sum <= ``room``."""
        if not needs or room <= 0:
            return [0] * len(needs)
        if not self.fair:
            return _greedy(room, needs, range(len(needs)))
        k = len(needs)
        order = [(self.turn + i) % k for i in range(k)]
        self.turn += 1
        takes = [0] * k
        # Who takes part: as many as fit at min_chunk each (at least one), in turn order.
        chosen: list[int] = []
        reserved = 0
        for i in order:
            floor = min(needs[i], self.min_chunk)
            if chosen and reserved + floor > room:
                break
            chosen.append(i)
            reserved += floor
        left = room - _water_fill(room, needs, chosen, takes)
        if left > 0:  # the chosen are satisfied: the others use the rest, in turn order
            rest = [i for i in order if i not in chosen]
            for i, extra in zip(rest, _greedy(left, needs, rest), strict=True):
                takes[i] += extra
        return takes


def _greedy(room: int, needs: Sequence[int], order: Sequence[int]) -> list[int]:
    """First come, first served: each in ``order`` takes all it needs while room lasts."""
    out = []
    for i in order:
        take = min(room, needs[i])
        out.append(take)
        room -= take
    return out


def _water_fill(room: int, needs: Sequence[int], chosen: Sequence[int], takes: list[int]) -> int:
    """Share ``room`` equally among ``chosen`` into ``takes``, capped by each need; returns tokens given."""
    unsat = [i for i in chosen if needs[i] > 0]
    given = 0
    while unsat and room - given > 0:
        share = (room - given) // len(unsat)
        if share == 0:  # fewer tokens than prompts: one each to the first in turn
            for i in unsat[: room - given]:
                takes[i] += 1
                given += 1
            break
        still = []
        for i in unsat:
            take = min(share, needs[i] - takes[i])
            takes[i] += take
            given += take
            if takes[i] < needs[i]:
                still.append(i)
        if len(still) == len(unsat):
            # Nobody was capped, so nothing freed up; the remainder (< len(unsat)) goes one each.
            for i in still[: room - given]:
                takes[i] += 1
                given += 1
            break
        unsat = still
    return given
