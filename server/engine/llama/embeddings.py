"""Embeddings from the served model: a second llama.cpp context with embeddings on and pooling.

Pooling is the one asked for (``--pooling``), else the GGUF's own (``{arch}.pooling_type``: an
embedding model says how it was trained), else mean: a decoder model's file says none, and one vector
per token is not what ``/v1/embeddings`` returns.

The context is made from the engine's already loaded ``llama_model`` (see
:meth:`LlamaEngine.make_embedder <server.engine.llama.engine.LlamaEngine.make_embedder>`),
so the weights are in memory once and the GPU layers and thread count are the
engine's. It is separate from the generation context on purpose: an embeddings
context computes no logits and pools over the whole input, and keeping it apart
means an embeddings request never takes a generation slot.

Calls are serialised by a lock; each input is decoded alone in sequence 0 and the
context's memory is cleared before the next, so inputs never see each other.
Vectors are L2-normalised, as OpenAI's are.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp

from server.engine.base import EngineError, Pooling
from server.engine.llama.context_params import embedding_params
from server.engine.llama.model_info import meta_value
from server.engine.llama.own_thread import run_in_own_thread
from server.engine.llama.vocab import Vocab

POOLING_TYPES: dict[Pooling, int] = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


def model_pooling(model: Any) -> Pooling:
    """The pooling the GGUF asks for; mean when it says none (or rank, a reranker's) or nothing."""
    arch = meta_value(model, "general.architecture") or ""
    raw = meta_value(model, f"{arch}.pooling_type")
    by_type = {v: k for k, v in POOLING_TYPES.items()}
    try:
        return by_type.get(int(raw or 0), "mean")
    except ValueError:
        return "mean"


class LlamaEmbedder:
    """An :class:`~server.engine.base.Embedder` on a model it borrows: the model's owner frees it."""

    def __init__(self, model: Any, vocab: Vocab, *, n_ctx: int, n_threads: int, pooling: Pooling | None = None) -> None:
        self._lock = threading.Lock()
        self._vocab = vocab
        # The model pointer is used here and not kept: the engine owns it, and an
        # embedder that held it could outlive it.
        n_ctx = min(n_ctx, int(llama_cpp.llama_model_n_ctx_train(model)))
        self.pooling: Pooling = pooling or model_pooling(model)
        params = embedding_params(n_ctx, n_threads, POOLING_TYPES[self.pooling])
        self._ctx: Any = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise EngineError("llama.cpp could not create the embeddings context")
        self._batch: Any = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self.n_ctx = n_ctx
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))

    def tokenize(self, text: str) -> list[int]:
        return self._vocab.tokenize(text, add_special=True, parse_special=False)

    def embed(self, tokens: Sequence[int]) -> list[float]:
        """The pooled, L2-normalised embedding of one input (blocking)."""
        if not tokens:
            raise ValueError("an empty input has no embedding")
        if len(tokens) > self.n_ctx:
            raise ValueError(f"the input has {len(tokens)} tokens; the embeddings context holds {self.n_ctx}")
        with self._lock:
            if self._ctx is None:
                raise EngineError("the embeddings context is closed")
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
            b = self._batch
            for i, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1
            b.n_tokens = len(tokens)
            # Not in the caller's thread: see own_thread for what a decode leaves behind in a pooled thread.
            ctx = self._ctx
            rc = run_in_own_thread(lambda: int(llama_cpp.llama_decode(ctx, b)), name="llamaserve-embed")
            if rc != 0:
                raise EngineError(f"llama_decode failed with code {rc} while embedding")
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vec = list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: self.n_embd])
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def close(self) -> None:
        """Free the context (idempotent); the model stays, it is not the embedder's."""
        with self._lock:
            if self._batch is not None:
                llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                llama_cpp.llama_free(self._ctx)
                self._ctx = None
