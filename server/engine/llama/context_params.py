"""The llama.cpp context parameters of the engine's two kinds of context, side by side.

Both are made from the same loaded model with the same thread count; they differ in
what a decode computes (logits for ``n_slots`` sequences, or one pooled embedding).
"""

from __future__ import annotations

from typing import Any

import llama_cpp


def generation_params(*, n_ctx: int, n_batch: int, n_slots: int, n_threads: int, kv_unified: bool) -> Any:
    """The generation context: ``n_slots`` sequences in ``n_ctx`` cells, ``n_batch`` tokens a decode."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_seq_max = n_slots
    cparams.n_threads = n_threads
    cparams.n_threads_batch = n_threads
    cparams.no_perf = True
    # Unified: all sequences draw cells from one pool, so an idle slot's cached
    # prefix costs nothing until needed and slots can share prefix cells.
    cparams.kv_unified = kv_unified
    return cparams


def embedding_params(n_ctx: int, n_threads: int, pooling_type: int) -> Any:
    """An embeddings context: one sequence, pooled as ``pooling_type`` (llama.cpp's), no logits."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    # Pooling needs the whole input in one micro-batch.
    cparams.n_batch = n_ctx
    cparams.n_ubatch = n_ctx
    cparams.n_seq_max = 1
    cparams.n_threads = n_threads
    cparams.n_threads_batch = n_threads
    cparams.embeddings = True
    cparams.pooling_type = pooling_type
    cparams.no_perf = True
    return cparams
