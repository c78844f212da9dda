"""The llama.cpp engine: one model, one context, ``n_slots`` sequences, one decode per step.

Continuous batching the way llama.cpp's own ``llama-server`` does it, through the
low-level C bindings of llama-cpp-python (never its high-level ``Llama`` class,
which serialises requests):

* one ``llama_context`` with ``n_seq_max = n_slots``; slot ``i`` is sequence id ``i``;
* :meth:`LlamaEngine.step` builds ONE ``llama_batch``: first one token for every
  slot that is generating (so running streams are never starved by a long prompt),
  then chunks of pending prompts up to ``n_batch`` tokens in all (chunked prefill),
  and calls ``llama_decode`` once;
* every slot samples with its own ``llama_sampler`` chain, so seeds, penalties and
  grammars are per request;
* each slot remembers which tokens its KV cells hold, so a new prompt that shares
  a prefix with them (a chat's earlier turns) decodes only the rest. With the
  unified KV cache a slot may also borrow a prefix from another slot: the cells are
  shared (``llama_memory_seq_cp``), not copied;
* sequences that begin with the very prompt another slot is still prefilling (the
  ``n`` choices of one request) wait for it, then share its cells and sample from
  its last logits, each with its own sampler: the prompt is computed once.

A slot holds at most ``n_ctx_per_seq`` tokens. When it is full :meth:`step` stops
scheduling it and :meth:`LlamaEngine.slot_is_full` turns true; the scheduler then
finishes the sequence with ``length``.

Not thread-safe, like every engine: one thread at a time drives it (the
scheduler's engine thread). It is not bound to the thread that built it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from server.engine.base import (
    DecodeError,
    EmptyPromptError,
    EngineError,
    ModelInfo,
    PromptTooLongError,
    SamplingParams,
    SlotBusyError,
    StepOutput,
    TokenOutOfRangeError,
)
from server.engine.llama.sampling import make_sampler, with_logprobs

_c_log = logging.getLogger(__name__ + ".cpp")


def _forward_c_log(_level: int, text: bytes | None, _user_data: object) -> None:
    # Everything at DEBUG: llama.cpp narrates every load and context creation on
    # stderr, which is noise for a server. Turn on DEBUG for "server.engine.llama.engine.cpp"
    # to read it.
    if text and _c_log.isEnabledFor(logging.DEBUG):
        _c_log.debug("%s", text.decode("utf-8", "replace").rstrip("\n"))


# llama_log_set keeps only a raw pointer, process-wide, so the ctypes callback must
# outlive every engine: a constant made once, installed by each engine and never
# taken down (an engine that restored "the previous" callback on close could hand
# llama.cpp a pointer into another, already collected, engine).
_C_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_c_log)

# Metadata values that are whole vocabularies: useless in /v1/models and huge.
_BULKY_METADATA = frozenset(
    {
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
    }
)


@dataclass(eq=False)
class _Slot:
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
    leader: _Slot | None = None

    @property
    def prefilling(self) -> bool:
        return self.active and self.prompt_done < len(self.prompt)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``.

    Bisects on slice equality, which runs in C: a few dozen list compares instead
    of a Python loop over thousands of tokens.
    """
    hi = min(len(a), len(b), limit)
    if hi <= 0 or a[0] != b[0]:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 1  # a[:lo] == b[:lo] holds; a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


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
        self._batch: Any = None
        # Process-wide and idempotent; see _C_LOG_CALLBACK for why it is never undone.
        llama_cpp.llama_log_set(_C_LOG_CALLBACK, ctypes.c_void_p(0))

        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load the model {model_path!r}")
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
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------

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
        model = self._model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        if n_ctx_per_seq == 0:
            n_ctx_per_seq = n_ctx_train
        max_seqs = int(llama_cpp.llama_max_parallel_sequences())
        if n_slots > max_seqs:
            raise ValueError(f"n_slots={n_slots} exceeds llama.cpp's limit of {max_seqs} sequences")
        # Every generating slot needs a place in each batch.
        n_batch = max(n_batch, n_slots)
        threads = n_threads or os.cpu_count() or 1

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx_per_seq * n_slots
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # Unified: all sequences draw cells from one pool, so an idle slot's cached
        # prefix costs nothing until needed and slots can share prefix cells.
        cparams.kv_unified = kv_unified
        self._ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self._cparams = cparams  # kept for reset(), which builds the same context again
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._kv_unified = kv_unified
        self._n_batch = n_batch
        self._n_ctx_seq = n_ctx_per_seq
        self._threads = threads

        # One batch for the engine's life; numpy views write into its C arrays.
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(n_batch,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(n_batch,))[:] = 1
        # seq_id is an array of per-token pointers; keep the pointer objects so a
        # step writes ``rows[i][0]`` without re-indexing the outer array.
        self._b_seq = [b.seq_id[i] for i in range(n_batch)]
        self._b_seq_val = [-1] * n_batch  # what each row holds now, to skip rewrites
        self._arange = np.arange(n_batch, dtype=np.int32)

        self._slots = [_Slot(seq_id=i) for i in range(n_slots)]
        self._prefill_order: list[_Slot] = []  # FIFO of slots with prompt left
        self.prefilled_tokens = 0  # prompt tokens decoded so far (cache hits and shared prompts excluded)
        self._pieces: list[bytes | None] = [None] * self._n_vocab
        self._info = self._read_info(model_path, model_id, n_ctx_train, n_slots)

    def _meta(self, key: str) -> str | None:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def _all_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(int(llama_cpp.llama_model_meta_count(self._model))):
            kbuf = ctypes.create_string_buffer(256)
            if llama_cpp.llama_model_meta_key_by_index(self._model, i, kbuf, 256) < 0:
                continue
            key = kbuf.value.decode("utf-8", "replace")
            if key in _BULKY_METADATA:
                continue
            vbuf = ctypes.create_string_buffer(1024)
            n = llama_cpp.llama_model_meta_val_str_by_index(self._model, i, vbuf, 1024)
            if n >= 0:
                out[key] = vbuf.value.decode("utf-8", "replace")
        return out

    def _read_info(self, path: str, model_id: str, n_ctx_train: int, n_slots: int) -> ModelInfo:
        model = self._model
        arch = self._meta("general.architecture") or "unknown"

        def meta_int(key: str) -> int | None:
            raw = self._meta(f"{arch}.{key}")
            try:
                return int(raw) if raw is not None else None
            except ValueError:
                return None

        n_layer = int(llama_cpp.llama_model_n_layer(model))
        n_embd = meta_int("embedding_length") or int(llama_cpp.llama_model_n_embd(model))
        n_head = meta_int("attention.head_count") or int(llama_cpp.llama_model_n_head(model)) or 1
        n_head_kv = meta_int("attention.head_count_kv") or n_head
        k_dim = meta_int("attention.key_length") or n_embd // n_head
        v_dim = meta_int("attention.value_length") or n_embd // n_head
        n_ctx_total = int(llama_cpp.llama_n_ctx(self._ctx))
        # f16 K and V (the default cache type) for every cell of every layer.
        kv_bytes = n_ctx_total * n_layer * (k_dim + v_dim) * n_head_kv * 2

        ftype_name = llama_cpp.llama_ftype_name(llama_cpp.llama_model_ftype(model))
        quant = ftype_name.decode() if ftype_name else self._meta("general.file_type") or "unknown"

        template = llama_cpp.llama_model_chat_template(model, None)
        bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        is_eog = llama_cpp.llama_vocab_is_eog
        eog = frozenset(t for t in range(self._n_vocab) if is_eog(self._vocab, t))
        return ModelInfo(
            id=model_id,
            path=path,
            n_ctx_per_seq=self._n_ctx_seq,
            n_ctx_train=n_ctx_train,
            n_vocab=self._n_vocab,
            n_slots=n_slots,
            n_batch=self._n_batch,
            bos_token=bos if bos >= 0 else None,
            eos_token=eos if eos >= 0 else None,
            chat_template=template.decode("utf-8", "replace") if template else None,
            eog_tokens=eog,
            architecture=arch,
            quantization=quant,
            kv_cache_bytes=kv_bytes,
            metadata=self._all_metadata(),
        )

    # -- the Engine interface -----------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8  # never more tokens than bytes, plus BOS/EOS
        for _ in range(2):
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            if n == -(2**31):
                break
            cap = -n
        raise ValueError("text is too long to tokenize")

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of ``token``; ``b""`` for control and end-of-generation tokens.

        Control tokens (``<|im_end|>``, ``<|eot_id|>``, ...) are markup of the chat
        format, not text: rendering them would leak them into completions. Pass
        ``special=True`` to get their text anyway (e.g. to spot a tool-call marker
        that the model emits as a control token). User-defined added tokens are
        text and always rendered.
        """
        if special:
            return self._piece(token, True)
        cached = self._pieces[token]
        if cached is None:
            is_eog = llama_cpp.llama_vocab_is_eog(self._vocab, token)
            cached = b"" if is_eog else self._piece(token, False)
            self._pieces[token] = cached
        return cached

    def _piece(self, token: int, special: bool) -> bytes:
        if not 0 <= token < self._n_vocab:
            raise ValueError(f"token {token} is outside the vocabulary")
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def cached_prefix_len(self, slot: int, prompt: Sequence[int]) -> int:
        return _common_prefix(self._slot(slot).kv, list(prompt), len(prompt) - 1)

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
        sampler = make_sampler(params, vocab=self._vocab, n_vocab=self._n_vocab, n_ctx_seq=self._n_ctx_seq)
        leader = self._prefilling_same(tokens) if self._kv_unified else None
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
        if self._closed:
            raise EngineError("the engine is closed")
        if not self._ctx:
            raise EngineError("the engine has no context: recreating it failed")
        budget = self._n_batch
        tok, pos, want = self._b_token, self._b_pos, self._b_logits
        n = 0
        decoding: list[tuple[_Slot, int]] = []  # (slot, the token it feeds back)
        chunks: list[tuple[_Slot, int]] = []  # (slot, tokens taken from its prompt)
        sample_at: list[tuple[_Slot, int]] = []  # (slot, batch index of its logits)

        # Generating slots first, one token each: a long prompt never stalls a stream.
        for s in self._slots:
            if s.next_token is not None and len(s.kv) < self._n_ctx_seq:
                tok[n] = s.next_token
                pos[n] = len(s.kv)
                want[n] = 1
                self._set_seq(n, s.seq_id)
                decoding.append((s, s.next_token))
                sample_at.append((s, n))
                n += 1

        for s in self._prefill_order:
            room = budget - n
            if room <= 0:
                break
            start = s.prompt_done
            take = min(room, len(s.prompt) - start)
            p0 = len(s.kv)
            tok[n : n + take] = s.prompt[start : start + take]
            pos[n : n + take] = self._arange[:take] + p0
            want[n : n + take] = 0
            for i in range(n, n + take):
                self._set_seq(i, s.seq_id)
            if start + take == len(s.prompt):
                want[n + take - 1] = 1
                sample_at.append((s, n + take - 1))
            chunks.append((s, take))
            n += take

        if n == 0:
            return []
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            in_batch = [s for s, _ in decoding] + [s for s, _ in chunks]
            self._rollback(in_batch)
            slots = tuple(sorted({s.seq_id for s in in_batch}))
            raise DecodeError(f"llama_decode failed with code {rc}", code=rc, slots=slots)

        # The batch is in the cache: record it before sampling overwrites next_token.
        for s, token in decoding:
            s.kv.append(token)
            s.next_token = None
        for s, take in chunks:
            s.kv.extend(s.prompt[s.prompt_done : s.prompt_done + take])
            s.prompt_done += take
            self.prefilled_tokens += take
        if chunks:
            self._prefill_order = [s for s in self._prefill_order if s.prefilling]

        for s, i in list(sample_at):
            if not s.prefilling:
                for f in self._followers(s):
                    self._adopt(f, s)
                    sample_at.append((f, i))  # the same prompt: the same logits

        out: list[StepOutput] = []
        for s, i in sample_at:
            token = int(llama_cpp.llama_sampler_sample(s.sampler, self._ctx, i))
            s.next_token = token
            if s.top_logprobs is None:
                out.append(StepOutput(slot=s.seq_id, token=token))
            else:
                out.append(with_logprobs(self._ctx, self._n_vocab, s.seq_id, token, i, s.top_logprobs))
        return out

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

    def reset(self) -> None:
        """Recreate the llama.cpp context (see :meth:`Engine.reset`): model, batch and slot ids stay.

        Every slot ends and every cached prefix goes, since the new context holds no KV cells.
        """
        if self._closed:
            raise EngineError("the engine is closed")
        for s in self._slots:
            if s.sampler is not None:
                llama_cpp.llama_sampler_free(s.sampler)
        self._slots = [_Slot(seq_id=i) for i in range(len(self._slots))]
        self._prefill_order = []
        # The old context goes first: two KV caches at once may not fit in memory.
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
        self._ctx = llama_cpp.llama_init_from_model(self._model, self._cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not recreate its context (out of memory?)")
        self._mem = llama_cpp.llama_get_memory(self._ctx)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in getattr(self, "_slots", []):
            if s.sampler is not None:
                llama_cpp.llama_sampler_free(s.sampler)
                s.sampler = None
            s.active = False
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- internals ----------------------------------------------------------------

    def _slot(self, slot: int) -> _Slot:
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"no slot {slot}; the engine has {len(self._slots)}")
        return self._slots[slot]

    def _set_seq(self, i: int, seq_id: int) -> None:
        if self._b_seq_val[i] != seq_id:
            self._b_seq[i][0] = seq_id
            self._b_seq_val[i] = seq_id

    def _reuse_prefix(self, s: _Slot, prompt: list[int]) -> int:
        """Trim the slot's cells to the longest reusable prefix of ``prompt``; return its length.

        At least the last prompt token is always decoded again, for its logits.
        """
        limit = len(prompt) - 1
        own = _common_prefix(s.kv, prompt, limit)
        donor: _Slot | None = None
        best = own
        if self._kv_unified:
            for other in self._slots:
                if other is not s:
                    n = _common_prefix(other.kv, prompt, limit)
                    if n > best:
                        donor, best = other, n
        mem = self._mem
        if donor is not None:
            llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(mem, donor.seq_id, s.seq_id, 0, best)
            s.kv = prompt[:best]
            return best
        if own < len(s.kv):
            # A partial removal can fail (recurrent models); a whole one never does.
            if not llama_cpp.llama_memory_seq_rm(mem, s.seq_id, own, -1):
                llama_cpp.llama_memory_seq_rm(mem, s.seq_id, -1, -1)
                own = 0
            del s.kv[own:]
        return own

    def _prefilling_same(self, prompt: list[int]) -> _Slot | None:
        for other in self._prefill_order:
            if other.leader is None and other.prompt == prompt:
                return other
        return None

    def _followers(self, leader: _Slot) -> list[_Slot]:
        return [f for f in self._slots if f.leader is leader]

    def _adopt(self, f: _Slot, leader: _Slot) -> None:
        """Give follower ``f`` the leader's prompt cells (shared, not copied)."""
        mem = self._mem
        llama_cpp.llama_memory_seq_rm(mem, f.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(mem, leader.seq_id, f.seq_id, 0, len(leader.prompt))
        f.kv = list(leader.prompt)
        f.prompt_done = len(f.prompt)
        f.leader = None

    def _rollback(self, in_batch: list[_Slot]) -> None:
        # A failed decode may leave some ubatches in the cache; drop every cell past
        # what each slot recorded, so ``kv`` and the cache agree again.
        for s in in_batch:
            if not llama_cpp.llama_memory_seq_rm(self._mem, s.seq_id, len(s.kv), -1):
                llama_cpp.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
                s.kv = []
                s.prompt_done = 0
