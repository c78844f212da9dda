"""Where a new prompt's prefix comes from: the slot's own cells, another slot's, or the prompt cache.

The engine calls :func:`reuse_prefix` when a slot begins a sequence. The longest source wins:

* the slot's own cells, trimmed to the common prefix;
* another slot's cells: with the unified KV cache shared (``llama_memory_seq_cp``), not copied;
  with a KV pool per slot copied (the donor's state written into this slot, then trimmed), when
  the prefix gained is worth the copy (see :func:`worth_copying`);
* a state from the prompt cache (:mod:`server.engine.prompt_cache`), written into the slot and
  trimmed to the common prefix.

Before the slot's cells are overwritten or trimmed, their state goes into the prompt cache when it
is long enough to be worth it, so the conversation they hold can come back without a prefill.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import llama_cpp

from server.engine.llama.seq_state import restore_prefix, save_seq
from server.engine.llama.slots import Slot
from server.engine.prompt_cache.cache import Hit, PromptCache
from server.engine.prompt_cache.keys import common_prefix
from server.engine.prompt_cache.ram import Entry

log = logging.getLogger(__name__)


def reuse_prefix(
    ctx: Any, slots: list[Slot], s: Slot, prompt: list[int], *, kv_unified: bool, cache: PromptCache | None
) -> int:
    """Fill the slot's cells with the longest reusable prefix of ``prompt``; return its length.

    At least the last prompt token is always decoded again, for its logits.
    """
    mem = llama_cpp.llama_get_memory(ctx)
    limit = len(prompt) - 1
    own = common_prefix(s.kv, prompt, limit)
    donor: Slot | None = None
    best = own
    for other in slots:
        if other is not s:
            n = common_prefix(other.kv, prompt, limit)
            if n > best and (kv_unified or worth_copying(n - own, len(other.kv))):
                donor, best = other, n
    started = time.perf_counter()
    hit = cache.lookup(prompt, limit, better_than=best) if cache and cache.worth_looking(limit - best) else None
    if cache is not None and (own < len(s.kv) or donor or hit) and cache.worth_saving(s.kv):
        save_to_cache(ctx, s, cache, keep=hit.entry if hit is not None else None)
    if hit is not None and cache is not None:
        if _restore(ctx, mem, s, hit):
            cache.restored(hit.n_tokens, time.perf_counter() - started)
            s.kv = prompt[: hit.n_tokens]
            return hit.n_tokens
        own = 0  # the slot is empty now
    if donor is not None:
        return best if take_prefix(ctx, donor, s, best, kv_unified=kv_unified) else 0
    if own < len(s.kv):
        # A partial removal can fail (recurrent models); a whole one never does.
        if not llama_cpp.llama_memory_seq_rm(mem, s.seq_id, own, -1):
            llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
            own = 0
        del s.kv[own:]
    return own


# Copying another pool's sequence costs memory traffic for all its cells, computing a token costs a
# forward pass: copying pays when it spares at least this share of the cells it moves (and a few
# tokens at all, or the copy's fixed cost is not worth it).
_COPY_MIN_GAIN = 16
_COPY_CELLS_PER_TOKEN_SPARED = 64


def worth_copying(gain: int, donor_cells: int) -> bool:
    """Whether a per-slot pool should copy a donor of ``donor_cells`` cells to spare ``gain`` tokens."""
    return gain >= _COPY_MIN_GAIN and donor_cells <= gain * _COPY_CELLS_PER_TOKEN_SPARED


def take_prefix(ctx: Any, donor: Slot, s: Slot, n_tokens: int, *, kv_unified: bool) -> bool:
    """Give slot ``s`` the donor's first ``n_tokens`` cells: shared in the unified pool, copied (the
    donor's state written into ``s`` and trimmed) between per-slot pools. False when a copy failed:
    ``s`` is empty then."""
    mem = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
    s.kv = []
    if kv_unified:
        llama_cpp.llama_memory_seq_cp(mem, donor.seq_id, s.seq_id, 0, n_tokens)
    else:
        data = save_seq(ctx, donor.seq_id)
        if data is None or not restore_prefix(ctx, s.seq_id, data, n_tokens):
            log.debug("could not copy slot %d's %d-token prefix into slot %d", donor.seq_id, n_tokens, s.seq_id)
            return False
    s.kv = donor.kv[:n_tokens]
    return True


def slot_loss(s: Slot, prompt: list[int], cache: PromptCache | None) -> int:
    """Tokens of the slot's cells that serving ``prompt`` there would lose for good."""
    lost = len(s.kv) - common_prefix(s.kv, prompt, len(prompt))
    if lost and cache is not None and len(s.kv) >= cache.min_tokens:
        return 0  # saved to the cache before it is overwritten, or already there
    return lost


def save_to_cache(ctx: Any, s: Slot, cache: PromptCache, *, keep: Entry | None = None) -> None:
    # The state of this chat's earlier turn (the one the slot was restored from) is superseded by
    # this one: its memory takes the new copy. ``keep`` is the state about to be restored.
    data = save_seq(ctx, s.seq_id, into=cache.reusable_buffer(s.kv, keep=keep))
    if data is None:
        log.debug("llama.cpp gave no state for slot %d; its %d tokens are not cached", s.seq_id, len(s.kv))
        return
    cache.save(s.kv, data)


def _restore(ctx: Any, mem: Any, s: Slot, hit: Hit) -> bool:
    s.kv = []
    llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
    if restore_prefix(ctx, s.seq_id, hit.entry.data, hit.n_tokens):
        return True
    log.warning("could not restore a cached %d-token prefix into slot %d; computing it", hit.n_tokens, s.seq_id)
    return False
