"""The llama.cpp engine: one model, one context, ``n_slots`` sequences, one decode per step.

Continuous batching the way llama.cpp's own ``llama-server`` does it, through the
low-level C bindings of llama-cpp-python (never its high-level ``Llama`` class,
which serialises requests):

* one ``llama_context`` with ``n_seq_max = n_slots``; slot ``i`` is sequence id ``i``;
* :meth:`LlamaEngine.step` builds ONE ``llama_batch``: first one token for every
  slot that is generating (so running streams are never starved by a long prompt),
  then chunks of pending prompts up to ``n_batch`` tokens in all (chunked prefill,
  shared fairly among the pending prompts unless ``fair_prefill`` is off), and calls
  ``llama_decode`` once;
* every slot samples with its own ``llama_sampler`` chain, so seeds, penalties and
  grammars are per request;
* each slot remembers which tokens its KV cells hold, so a new prompt that shares
  a prefix with them (a chat's earlier turns) decodes only the rest. A slot may also
  borrow a prefix from another slot: with the unified KV cache (``kv_unified``, this
  class's default; the server's ``--kv-unified`` is off by default) the cells are
  shared (``llama_memory_seq_cp``), with a pool per slot they are copied;
* with a prompt cache (``prompt_cache=``), a slot's state is saved to host RAM (and
  disk) before its cells are overwritten, and a later prompt sharing its prefix gets
  it restored instead of recomputed (:mod:`server.engine.llama.prefix_reuse`);
* a running sequence can be paused (its cells copied to host memory, its sampler kept) and
  resumed later in any free slot, for preemption (:mod:`server.engine.llama.pausing`);
* sequences that begin with the very prompt another slot is still prefilling (the
  ``n`` choices of one request) wait for it, then take its cells (shared in the unified
  pool, copied between per-slot pools) and sample from its last logits, each with its
  own sampler: the prompt is computed once.

A slot holds at most ``n_ctx_per_seq`` tokens. When it is full :meth:`step` stops
scheduling it and :meth:`LlamaEngine.slot_is_full` turns true; the scheduler then
finishes the sequence with ``length``.

Not thread-safe, like every engine: one thread at a time drives it (the
scheduler's engine thread). It is not bound to the thread that built it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp

from server.engine.base import (
    DecodeError,
    Embedder,
    EmptyPromptError,
    EngineError,
    ModelInfo,
    PausedSequence,
    PauseRefusedError,
    Pooling,
    PromptTooLongError,
    SamplingParams,
    SlotBusyError,
    StepOutput,
    TokenOutOfRangeError,
)
from server.engine.llama import pausing
from server.engine.llama.batch import Plan, TokenBatch, plan_step
from server.engine.llama.context_params import generation_params
from server.engine.llama.cpu import physical_cores
from server.engine.llama.embeddings import LlamaEmbedder
from server.engine.llama.loading import load_weights
from server.engine.llama.model_info import read_model_info
from server.engine.llama.prefix_reuse import reuse_prefix, slot_loss, take_prefix
from server.engine.llama.rpc import WorkerWatch
from server.engine.llama.sampling import make_sampler, with_logprobs
from server.engine.llama.seq_state import cache_identity
from server.engine.llama.slots import Slot
from server.engine.llama.vocab import Vocab
from server.engine.prefill import DEFAULT_MIN_CHUNK, PrefillPolicy
from server.engine.prompt_cache.cache import PromptCache, PromptCacheConfig
from server.engine.prompt_cache.keys import common_prefix
from server.engine.prompt_cache.stats import CacheStats


class LlamaEngine:
    """The :class:`~server.engine.base.Engine` over llama.cpp (see the module docstring)."""

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str,
        n_slots: int = 4,
        n_ctx_per_seq: int = 8192,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        kv_unified: bool = True,
        rpc_servers: Sequence[str] = (),
        tensor_split: Sequence[float] = (),
        on_worker_lost: Callable[[str, str], None] | None = None,
        fair_prefill: bool = True,
        prefill_min_chunk: int = DEFAULT_MIN_CHUNK,
        prompt_cache: PromptCacheConfig | None = None,
    ) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be at least 1")
        if n_ctx_per_seq < 0:
            raise ValueError("n_ctx_per_seq must be >= 0 (0 = the model's trained context)")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(model_path)
        self._closed = False
        self._model: Any = None
        self._ctx: Any = None
        self._batch: TokenBatch | None = None
        self._embedders: list[LlamaEmbedder] = []
        # make_embedder runs in a worker thread: close must not free the model under it.
        self._embedders_lock = threading.Lock()
        # How each step's prefill room is shared among pending prompts (see server.engine.prefill).
        self._prefill_policy = PrefillPolicy(fair=fair_prefill, min_chunk=max(1, prefill_min_chunk))
        self._cache: PromptCache | None = None
        self._paused: set[pausing.Paused] = set()  # held until resumed or dropped; freed on close
        self._watch: WorkerWatch | None = None
        weights = load_weights(
            model_path, n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers, tensor_split=tensor_split
        )
        self._model = weights.model
        self._weights = weights
        if rpc_servers and on_worker_lost is not None:
            self._watch = WorkerWatch(rpc_servers, on_lost=on_worker_lost)
            self._watch.start()
        try:
            self._init_context(
                model_path=model_path,
                model_id=model_id,
                n_slots=n_slots,
                n_ctx_per_seq=n_ctx_per_seq,
                n_batch=n_batch,
                n_threads=n_threads,
                kv_unified=kv_unified,
            )
            self._cache = self._open_cache(prompt_cache, model_path, n_gpu_layers)
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------

    def _open_cache(self, config: PromptCacheConfig | None, model_path: str, n_gpu_layers: int) -> PromptCache | None:
        if config is None or (config.ram_bytes == 0 and config.disk_dir is None):
            return None
        # Keyed by everything that shapes the KV cells, so a stale state is never loaded.
        identity = cache_identity(model_path, self._cparams, n_ctx_per_seq=self._n_ctx_seq, n_gpu_layers=n_gpu_layers)
        return PromptCache(config, identity=identity)

    def _init_context(
        self,
        *,
        model_path: str,
        model_id: str,
        n_slots: int,
        n_ctx_per_seq: int,
        n_batch: int,
        n_threads: int | None,
        kv_unified: bool,
    ) -> None:
        self._vocab = Vocab(self._model)
        self._n_vocab = self._vocab.n_tokens
        if n_ctx_per_seq == 0:
            n_ctx_per_seq = int(llama_cpp.llama_model_n_ctx_train(self._model))
        max_seqs = int(llama_cpp.llama_max_parallel_sequences())
        if n_slots > max_seqs:
            raise ValueError(f"n_slots={n_slots} exceeds llama.cpp's limit of {max_seqs} sequences")
        # Every generating slot needs a place in each batch.
        n_batch = max(n_batch, n_slots)
        self._threads = n_threads or physical_cores()
        self._cparams = generation_params(
            n_ctx=n_ctx_per_seq * n_slots,
            n_batch=n_batch,
            n_slots=n_slots,
            n_threads=self._threads,
            kv_unified=kv_unified,
        )  # kept for reset(), which builds the same context again
        self._ctx = llama_cpp.llama_init_from_model(self._model, self._cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._kv_unified = kv_unified
        self._n_batch = n_batch
        self._n_ctx_seq = n_ctx_per_seq
        self._batch = TokenBatch(n_batch)
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._prefill_order: list[Slot] = []  # FIFO of slots with prompt left
        self.prefilled_tokens = 0  # prompt tokens decoded so far (cache hits and shared prompts excluded)
        self._info = read_model_info(
            self._model,
            self._ctx,
            self._vocab,
            path=model_path,
            model_id=model_id,
            n_ctx_per_seq=n_ctx_per_seq,
            n_slots=n_slots,
            n_batch=n_batch,
        )
        self._info = dataclasses.replace(
            self._info, placement=self._weights.placement, rpc_endpoints=self._weights.rpc_endpoints
        )

    # -- the Engine interface -----------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of ``token``; see :meth:`Vocab.token_bytes <server.engine.llama.vocab.Vocab.token_bytes>`."""
        return self._vocab.token_bytes(token, special=special)

    def cached_prefix_len(self, slot: int, prompt: Sequence[int]) -> int:
        return common_prefix(self._slot(slot).kv, list(prompt), len(prompt) - 1)

    def slot_loss(self, slot: int, prompt: Sequence[int]) -> int:
        return slot_loss(self._slot(slot), list(prompt), self._cache)

    def cache_stats(self) -> CacheStats | None:
        cache = self._cache
        return cache.stats if cache is not None else None

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        s = self._slot(slot)
        if s.active:
            raise SlotBusyError(slot)
        tokens = list(prompt)
        if not tokens:
            raise EmptyPromptError()
        if len(tokens) > self._n_ctx_seq:
            raise PromptTooLongError(len(tokens), self._n_ctx_seq)
        if min(tokens) < 0 or max(tokens) >= self._n_vocab:
            raise TokenOutOfRangeError("the prompt holds a token outside the vocabulary")
        # Build the sampler first: a bad grammar must leave the slot untouched.
        sampler = make_sampler(params, vocab=self._vocab.ptr, n_vocab=self._n_vocab, n_ctx_seq=self._n_ctx_seq)
        leader = self._prefilling_same(tokens)
        s.active = True
        s.prompt = tokens
        s.next_token = None
        s.sampler = sampler
        s.top_logprobs = params.top_logprobs
        if leader is not None:
            # The prompt is computed once, by the leader; every token of it is reused here.
            s.leader = leader
            s.prompt_done = 0
            return len(tokens)
        reused = self._reuse_prefix(s, tokens)
        s.prompt_done = reused
        self._prefill_order.append(s)
        return reused

    def step(self) -> list[StepOutput]:
        if self._closed or self._batch is None:
            raise EngineError("the engine is closed")
        if not self._ctx:
            raise EngineError("the engine has no context: recreating it failed")
        plan = plan_step(
            self._batch, self._slots, self._prefill_order, n_ctx_seq=self._n_ctx_seq, policy=self._prefill_policy
        )
        if plan.n == 0:
            return []
        rc = self._batch.decode(self._ctx, plan.n)
        if rc != 0:
            in_batch = [s for s, _ in plan.decoding] + [s for s, _ in plan.chunks]
            self._rollback(in_batch)
            slots = tuple(sorted({s.seq_id for s in in_batch}))
            raise DecodeError(f"llama_decode failed with code {rc}", code=rc, slots=slots)
        self._record(plan)
        for s, i in list(plan.sample_at):
            if not s.prefilling:
                for f in self._followers(s):
                    if self._adopt(f, s):
                        plan.sample_at.append((f, i))  # the same prompt: the same logits
        return [self._sample(s, i) for s, i in plan.sample_at]

    def _record(self, plan: Plan) -> None:
        # The batch is in the cache: record it before sampling overwrites next_token.
        for s, token in plan.decoding:
            s.kv.append(token)
            s.next_token = None
        for s, take in plan.chunks:
            s.kv.extend(s.prompt[s.prompt_done : s.prompt_done + take])
            s.prompt_done += take
            self.prefilled_tokens += take
        if plan.chunks:
            self._prefill_order = [s for s in self._prefill_order if s.prefilling]

    def _sample(self, s: Slot, i: int) -> StepOutput:
        token = int(llama_cpp.llama_sampler_sample(s.sampler, self._ctx, i))
        s.next_token = token
        if s.top_logprobs is None:
            return StepOutput(slot=s.seq_id, token=token)
        return with_logprobs(self._ctx, self._n_vocab, s.seq_id, token, i, s.top_logprobs)

    def slot_is_full(self, slot: int) -> bool:
        """True when the slot holds ``n_ctx_per_seq`` tokens and cannot decode another.

        :meth:`step` no longer schedules such a slot; the scheduler should finish
        its sequence with ``length`` and release it.
        """
        s = self._slot(slot)
        return s.active and len(s.kv) >= self._n_ctx_seq

    def n_cached_cells(self) -> int:
        # Cells shared between slots count once per slot: an upper bound, and it
        # never exceeds the context, since no slot holds more than n_ctx_per_seq.
        return sum(len(s.kv) for s in self._slots)

    def prefill_progress(self, slot: int) -> int:
        s = self._slot(slot)
        if not s.active:
            return 0
        # A follower waits on its leader's prefill of the very same prompt.
        return (s.leader or s).prompt_done

    def release(self, slot: int, *, keep_cache: bool = True) -> None:
        s = self._slot(slot)
        if s.sampler is not None:
            llama_cpp.llama_sampler_free(s.sampler)
        s.sampler = None
        s.active = False
        s.prompt = []
        s.prompt_done = 0
        s.next_token = None
        s.top_logprobs = None
        s.leader = None
        if s in self._prefill_order:
            self._prefill_order.remove(s)
        if not keep_cache and not self._closed:
            llama_cpp.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
            s.kv = []
        followers = self._followers(s)
        if followers and not self._closed:
            # The leader left before its prompt was in: the first follower takes over,
            # starting from whatever the leader had already computed.
            heir, rest = followers[0], followers[1:]
            heir.leader = None
            heir.prompt_done = self._reuse_prefix(heir, heir.prompt)
            self._prefill_order.append(heir)
            for f in rest:
                f.leader = heir

    def pause(self, slot: int) -> PausedSequence:
        s = self._slot(slot)
        if self._closed or not self._ctx:
            raise PauseRefusedError("the engine has no context")
        paused = pausing.pause(self._ctx, s, shares_prompt=s.leader is not None or bool(self._followers(s)))
        self._paused.add(paused)
        self.release(slot)  # the cells stay, as a finished sequence's do, for prefix reuse
        return paused

    def resume(self, slot: int, paused: PausedSequence) -> None:
        s = self._slot(slot)
        if s.active:
            raise SlotBusyError(slot)
        if not isinstance(paused, pausing.Paused) or paused not in self._paused:
            raise EngineError("not a sequence this engine holds paused")
        if self._closed or not self._ctx:
            raise EngineError("the engine has no context")
        pausing.resume(self._ctx, s, paused, self._cache)
        self._paused.discard(paused)
        if s.prefilling:
            self._prefill_order.append(s)

    def drop_paused(self, paused: PausedSequence) -> None:
        if isinstance(paused, pausing.Paused) and paused in self._paused:
            self._paused.discard(paused)
            pausing.drop(paused)

    def reset(self) -> None:
        """Recreate the llama.cpp context (see :meth:`Engine.reset`): model, batch and slot ids stay.

        Every slot ends and every cached prefix goes, since the new context holds no KV cells.
        """
        if self._closed:
            raise EngineError("the engine is closed")
        for s in self._slots:
            if s.sampler is not None:
                llama_cpp.llama_sampler_free(s.sampler)
        self._slots = [Slot(seq_id=i) for i in range(len(self._slots))]
        self._prefill_order = []
        # The old context goes first: two KV caches at once may not fit in memory.
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
        self._ctx = llama_cpp.llama_init_from_model(self._model, self._cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not recreate its context (out of memory?)")
        self._mem = llama_cpp.llama_get_memory(self._ctx)

    def make_embedder(self, n_ctx: int, *, pooling: Pooling | None = None) -> Embedder:
        """An embeddings context on this engine's model, with its threads (see :class:`LlamaEmbedder`).

        Called from a worker thread while the engine thread steps: it only reads the model.
        """
        with self._embedders_lock:
            if self._closed:
                raise EngineError("the engine is closed")
            embedder = LlamaEmbedder(self._model, self._vocab, n_ctx=n_ctx, n_threads=self._threads, pooling=pooling)
            self._embedders.append(embedder)
            return embedder

    def close(self) -> None:
        with self._embedders_lock:
            if self._closed:
                return
            self._closed = True
        if self._watch is not None:
            self._watch.stop()
        for s in getattr(self, "_slots", []):
            if s.sampler is not None:
                llama_cpp.llama_sampler_free(s.sampler)
                s.sampler = None
            s.active = False
        for paused in list(self._paused):
            self.drop_paused(paused)
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        # Every context goes before the model they were made from (no embedder is made now: closed).
        for embedder in self._embedders:
            embedder.close()
        self._embedders = []
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None
        if self._cache is not None:
            self._cache.close()  # the disk tier finishes its pending writes

    # -- internals ----------------------------------------------------------------

    def _slot(self, slot: int) -> Slot:
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"no slot {slot}; the engine has {len(self._slots)}")
        return self._slots[slot]

    def _reuse_prefix(self, s: Slot, prompt: list[int]) -> int:
        return reuse_prefix(self._ctx, self._slots, s, prompt, kv_unified=self._kv_unified, cache=self._cache)

    def _prefilling_same(self, prompt: list[int]) -> Slot | None:
        for other in self._prefill_order:
            if other.leader is None and other.prompt == prompt:
                return other
        return None

    def _followers(self, leader: Slot) -> list[Slot]:
        return [f for f in self._slots if f.leader is leader]

    def _adopt(self, f: Slot, leader: Slot) -> bool:
        """Give follower ``f`` the leader's prompt cells (its cells hold just the prompt now). False when
        a copy between per-slot pools failed: the follower then computes the prompt itself."""
        f.leader = None
        if not take_prefix(self._ctx, leader, f, len(leader.prompt), kv_unified=self._kv_unified):
            f.prompt_done = 0
            self._prefill_order.append(f)
            return False
        f.prompt_done = len(f.prompt)
        return True

    def _rollback(self, in_batch: list[Slot]) -> None:
        # A failed decode may leave some ubatches in the cache; drop every cell past
        # what each slot recorded, so ``kv`` and the cache agree again.
        for s in in_batch:
            if not llama_cpp.llama_memory_seq_rm(self._mem, s.seq_id, len(s.kv), -1):
                llama_cpp.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
                s.kv = []
                s.prompt_done = 0
