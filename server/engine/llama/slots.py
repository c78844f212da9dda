"""A sequence slot of the llama.cpp engine (its prefix arithmetic is :mod:`server.engine.prompt_cache.keys`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Slot:
    seq_id: int
    # Tokens whose K/V sit in this sequence's cells, at positions 0..len-1. Only
    # updated after a decode succeeds, so it never claims a cell that is not there.
    kv: list[int] = field(default_factory=list)
    active: bool = False
    prompt: list[int] = field(default_factory=list)
    prompt_done: int = 0  # how many of ``prompt`` are in ``kv``
    next_token: int | None = None  # sampled, not yet decoded
    sampler: Any = None  # llama_sampler_p (a ctypes pointer); None when idle
    top_logprobs: int | None = None
    # Another slot prefilling this very prompt (the n choices of one request): this slot
    # waits, then takes the leader's cells and samples from the leader's last logits.
    leader: Slot | None = None

    @property
    def prefilling(self) -> bool:
        return self.active and self.prompt_done < len(self.prompt)
