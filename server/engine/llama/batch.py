"""What goes into one decode: the engine's one ``llama_batch`` and the plan that fills it.

Every generating slot gets one token, and chunks of pending prompts take what room is
left (chunked prefill), so a long new prompt never stalls a running stream. The room is
shared among the pending prompts by a :class:`~server.engine.prefill.PrefillPolicy`
(fair by default: a short prompt that arrives during a long one's prefill is not made to
wait for all of it; first come, first served when fairness is off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from server.engine.llama.slots import Slot
from server.engine.prefill import PrefillPolicy


class TokenBatch:
    """A ``llama_batch`` of up to ``capacity`` tokens, each in exactly one sequence.

    ``token``, ``pos`` and ``logits`` are numpy views on its C arrays, so a step
    fills whole prompt chunks with one slice assignment.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.c: Any = llama_cpp.llama_batch_init(capacity, 0, 1)
        b = self.c
        self.token: npt.NDArray[np.int32] = np.ctypeslib.as_array(b.token, shape=(capacity,))
        self.pos: npt.NDArray[np.int32] = np.ctypeslib.as_array(b.pos, shape=(capacity,))
        self.logits: npt.NDArray[np.int8] = np.ctypeslib.as_array(b.logits, shape=(capacity,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(capacity,))[:] = 1
        # seq_id is an array of per-token pointers; keep the pointer objects so a
        # step writes ``rows[i][0]`` without re-indexing the outer array.
        self._seq = [b.seq_id[i] for i in range(capacity)]
        self._seq_val = [-1] * capacity  # what each row holds now, to skip rewrites
        self.arange = np.arange(capacity, dtype=np.int32)

    def set_seq(self, i: int, seq_id: int) -> None:
        if self._seq_val[i] != seq_id:
            self._seq[i][0] = seq_id
            self._seq_val[i] = seq_id

    def decode(self, ctx: Any, n_tokens: int) -> int:
        """``llama_decode`` the first ``n_tokens`` rows; llama.cpp's return code (0 = done)."""
        self.c.n_tokens = n_tokens
        return int(llama_cpp.llama_decode(ctx, self.c))

    def free(self) -> None:
        if self.c is not None:
            llama_cpp.llama_batch_free(self.c)
            self.c = None


@dataclass
class Plan:
    """What one step put in the batch, for the engine to record once the decode succeeds."""

    n: int = 0  # batch rows used
    decoding: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, the token it feeds back)
    chunks: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, tokens taken from its prompt)
    sample_at: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, batch row of its logits)


def plan_step(
    batch: TokenBatch,
    slots: Sequence[Slot],
    prefill_order: Sequence[Slot],
    *,
    n_ctx_seq: int,
    policy: PrefillPolicy | None = None,
) -> Plan:
    """Fill ``batch`` for one step; the slots themselves are not changed (``policy`` takes its turn).

    Rows go in sequence order, each slot's tokens together: with a KV pool per slot
    (``kv_unified`` off) llama.cpp cuts a batch into micro-batches of consecutive sequences, so
    any other order would cost it more graph computes; the unified pool does not mind.
    """
    plan = Plan()
    decoding = {s for s in slots if s.next_token is not None and len(s.kv) < n_ctx_seq}  # a full slot waits
    room = batch.capacity - len(decoding)
    takes: dict[Slot, int] = {}
    if prefill_order and room > 0:
        needs = [len(s.prompt) - s.prompt_done for s in prefill_order]
        shares = (policy or PrefillPolicy(fair=False)).shares(room, needs)
        takes = {s: take for s, take in zip(prefill_order, shares, strict=True) if take > 0}
    for s in slots:
        if s in decoding:
            _add_token(batch, plan, s)
        elif s in takes:
            _add_chunk(batch, plan, s, takes[s])
    return plan


def _add_token(batch: TokenBatch, plan: Plan, s: Slot) -> None:
    assert s.next_token is not None
    n = plan.n
    batch.token[n] = s.next_token
    batch.pos[n] = len(s.kv)
    batch.logits[n] = 1
    batch.set_seq(n, s.seq_id)
    plan.decoding.append((s, s.next_token))
    plan.sample_at.append((s, n))
    plan.n += 1


def _add_chunk(batch: TokenBatch, plan: Plan, s: Slot, take: int) -> None:
    n = plan.n
    start = s.prompt_done
    batch.token[n : n + take] = s.prompt[start : start + take]
    batch.pos[n : n + take] = batch.arange[:take] + len(s.kv)
    batch.logits[n : n + take] = 0
    for i in range(n, n + take):
        batch.set_seq(i, s.seq_id)
    if start + take == len(s.prompt):
        batch.logits[n + take - 1] = 1
        plan.sample_at.append((s, n + take - 1))
    plan.chunks.append((s, take))
    plan.n += take
