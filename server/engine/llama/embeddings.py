"""Embeddings from the served GGUF: a second llama.cpp context with embeddings on and mean pooling.

It is separate from the generation engine's context on purpose: an embeddings
context computes no logits and pools over the whole input, and keeping it apart
means an embeddings request never takes a generation slot. The model file is
loaded again (llama.cpp maps it, so the weights' pages are shared by the OS).

Calls are serialised by a lock; each input is decoded alone in sequence 0 and the
context's memory is cleared before the next, so inputs never see each other.
Vectors are L2-normalised, as OpenAI's are.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp

from server.engine.base import EngineError


class LlamaEmbedder:
    def __init__(
        self, model_path: str, *, n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0
    ) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(model_path)
        self._lock = threading.Lock()
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load the model {model_path!r} for embeddings")
        try:
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            n_ctx = min(n_ctx, int(llama_cpp.llama_model_n_ctx_train(self._model)))
            threads = n_threads or os.cpu_count() or 1
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_ctx
            # Pooling needs the whole input in one micro-batch.
            cparams.n_batch = n_ctx
            cparams.n_ubatch = n_ctx
            cparams.n_seq_max = 1
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.embeddings = True
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            cparams.no_perf = True
            self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not self._ctx:
                raise EngineError("llama.cpp could not create the embeddings context")
            self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        except BaseException:
            self.close()
            raise
        self.n_ctx = n_ctx
        self.n_embd = int(llama_cpp.llama_model_n_embd(self._model))

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, False)
        if n < 0:
            raise ValueError("text is too long to tokenize")
        return list(buf[:n])

    def embed(self, tokens: Sequence[int]) -> list[float]:
        """The mean-pooled, L2-normalised embedding of one input (blocking)."""
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
            rc = llama_cpp.llama_decode(self._ctx, b)
            if rc != 0:
                raise EngineError(f"llama_decode failed with code {rc} while embedding")
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vec = list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: self.n_embd])
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def close(self) -> None:
        with self._lock:
            if self._batch is not None:
                llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                llama_cpp.llama_free(self._ctx)
                self._ctx = None
            if self._model:
                llama_cpp.llama_model_free(self._model)
                self._model = None
