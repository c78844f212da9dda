"""Taking a running sequence out of its slot and putting it back, for preemption.

What a sequence is, besides its KV cells, lives in its :class:`~server.engine.llama.slots.Slot`:
the prompt and how much of it is in, the token sampled last and not yet decoded, and the
``llama_sampler`` chain, which holds the RNG, the grammar's state and the penalties' history.
:func:`pause` copies the cells out to host memory (``llama_state_seq_get_data``) and moves the
rest into a :class:`Paused`; :func:`resume` writes the cells into a free slot, maybe another one,
and moves the rest back, so the next step decodes the pending token as if nothing had happened.

The state is held here, outside the prompt cache: the cache's RAM tier evicts by size and may be
off (``--cache-ram 0``), and a paused sequence must come back whatever the cache does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from server.engine.base import EngineError, PauseRefusedError
from server.engine.llama.prefix_reuse import save_to_cache
from server.engine.llama.seq_state import restore_prefix, save_seq
from server.engine.llama.slots import Slot
from server.engine.prompt_cache.cache import PromptCache


@dataclass(eq=False)
class Paused:
    kv: list[int]
    prompt: list[int]
    prompt_done: int
    next_token: int | None
    top_logprobs: int | None
    sampler: Any  # the slot's llama_sampler chain, owned here while paused
    data: bytearray | None = field(repr=False)  # the cells' state; None when there were none

    @property
    def n_bytes(self) -> int:
        return len(self.data) if self.data is not None else 0


def pause(ctx: Any, s: Slot, *, shares_prompt: bool) -> Paused:
    """Copy the slot's sequence out; the caller then releases the slot (keeping its cells)."""
    if not s.active:
        raise PauseRefusedError(f"slot {s.seq_id} runs no sequence")
    if shares_prompt:
        raise PauseRefusedError(f"slot {s.seq_id} shares its prompt with another slot still prefilling it")
    data = save_seq(ctx, s.seq_id) if s.kv else None
    if s.kv and data is None:
        raise PauseRefusedError(f"llama.cpp gave no state for slot {s.seq_id}")
    paused = Paused(list(s.kv), s.prompt, s.prompt_done, s.next_token, s.top_logprobs, s.sampler, data)
    s.sampler = None  # the slot's release must not free it
    return paused


def resume(ctx: Any, s: Slot, p: Paused, cache: PromptCache | None) -> None:
    """Write a paused sequence into the free slot ``s``; raises EngineError when llama.cpp refuses."""
    mem = llama_cpp.llama_get_memory(ctx)
    if s.kv != p.kv:  # the slot was used meanwhile (or it is another one): the cells go back in
        if cache is not None and cache.worth_saving(s.kv):
            save_to_cache(ctx, s, cache)  # what the slot held, as a new prompt would have saved it
        llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
        s.kv = []
        # Enough cells are free: no slot holds more than n_ctx_per_seq, and this one is empty now.
        if p.data is not None and not restore_prefix(ctx, s.seq_id, p.data, len(p.kv)):
            raise EngineError(f"llama.cpp refused a paused sequence's {len(p.kv)} cells in slot {s.seq_id}")
        s.kv = list(p.kv)
    s.active = True
    s.prompt = p.prompt
    s.prompt_done = p.prompt_done
    s.next_token = p.next_token
    s.top_logprobs = p.top_logprobs
    s.sampler, p.sampler = p.sampler, None
    s.leader = None
    p.data = None


def drop(p: Paused) -> None:
    if p.sampler is not None:
        llama_cpp.llama_sampler_free(p.sampler)
        p.sampler = None
    p.data = None
