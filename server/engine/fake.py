"""A deterministic scripted engine, a first-class :class:`Engine` for fast tests.

Tokens are bytes: token ``b`` (0..255) is the byte ``b``; 256 is BOS and 257 is
EOS. Every sequence replies with ``reply(prompt_text)`` byte by byte and then
EOS. ``step_delay`` makes each step take wall time, so live tests can cancel
mid-stream; ``fail_next_step`` makes the next step raise like a failed decode.

It keeps the llama.cpp engine's contract (``tests/model/test_engine_contract.py`` runs
one set of tests on both): the same refusals, a sampled token holds a cell only once
the next step feeds it back, and a full slot is no longer scheduled.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.engine.base import (
    Embedder,
    EmbeddingsUnavailableError,
    EmptyPromptError,
    EngineError,
    InvalidGrammarError,
    ModelInfo,
    Pooling,
    PromptTooLongError,
    SamplingParams,
    SlotBusyError,
    StepOutput,
    TokenLogprob,
    TokenOutOfRangeError,
)
from server.engine.prefill import DEFAULT_MIN_CHUNK, PrefillPolicy
from server.engine.prompt_cache.stats import CacheStats

BOS = 256
EOS = 257
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# What GBNF text is made of, for the fake's rough parse: literals, character classes, comments.
_GBNF_NOISE = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
_GBNF_RULE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*::=", re.MULTILINE)
_GBNF_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _gbnf_parses(grammar: str) -> bool:
    """A rough GBNF check: a root rule, balanced groups, no reference to an undefined rule."""
    text = _GBNF_NOISE.sub(" ", grammar)
    defined = set(_GBNF_RULE.findall(text))
    bodies = _GBNF_RULE.sub(" ", text)
    depth = 0
    for ch in bodies:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0 and "root" in defined and set(_GBNF_NAME.findall(bodies)) <= defined


def _default_reply(prompt: str) -> str:
    return "The quick brown fox jumps over the lazy dog."


@dataclass
class _Slot:
    cache: list[int] = field(default_factory=list)  # tokens whose "KV cells" are held
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet prefilled
    prompt_len: int = 0
    script: bytes = b""
    produced: int = 0
    next_token: int | None = None  # sampled, not yet fed back: it holds no cell yet
    active: bool = False
    top_logprobs: int | None = None


class FakeEngine:
    def __init__(
        self,
        *,
        reply: Callable[[str], str] = _default_reply,
        n_slots: int = 4,
        n_ctx_per_seq: int = 2048,
        n_batch: int = 512,
        step_delay: float = 0.0,
        model_id: str = "fake-model",
        chat_template: str | None = _CHATML,
        embedder: Embedder | None = None,
        fair_prefill: bool = True,
        prefill_min_chunk: int = DEFAULT_MIN_CHUNK,
    ) -> None:
        self._reply = reply
        self._prefill_policy = PrefillPolicy(fair=fair_prefill, min_chunk=prefill_min_chunk)
        self._prefill_order: list[int] = []  # slots with prompt left, oldest first
        self._embedder = embedder
        self._slots = [_Slot() for _ in range(n_slots)]
        self._step_delay = step_delay
        self.fail_next_step = False
        self.broken = False  # every step fails until reset(), like an unusable llama.cpp context
        self.steps = 0
        self.resets = 0
        self.prefilled_tokens = 0
        self._info = ModelInfo(
            id=model_id,
            path="<fake>",
            n_ctx_per_seq=n_ctx_per_seq,
            n_ctx_train=n_ctx_per_seq,
            n_vocab=258,
            n_slots=n_slots,
            n_batch=n_batch,
            bos_token=BOS,
            eos_token=EOS,
            chat_template=chat_template,
            eog_tokens=frozenset({EOS}),
            architecture="fake",
            quantization="none",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        tokens = list(text.encode("utf-8"))
        return [BOS, *tokens] if add_special else tokens

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        return bytes([token]) if token < 256 else b""

    def cached_prefix_len(self, slot: int, prompt: Sequence[int]) -> int:
        n = 0
        for a, b in zip(self._slots[slot].cache, prompt, strict=False):
            if a != b:
                break
            n += 1
        return max(0, min(n, len(prompt) - 1))

    def slot_loss(self, slot: int, prompt: Sequence[int]) -> int:
        # No prompt cache: whatever the prompt does not share is gone.
        cache = self._slots[slot].cache
        shared = 0
        for a, b in zip(cache, prompt, strict=False):
            if a != b:
                break
            shared += 1
        return len(cache) - shared

    def cache_stats(self) -> CacheStats | None:
        return None

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        # The same refusals, in the same order, as the llama.cpp engine: the slot stays untouched.
        s = self._slots[slot]
        if s.active:
            raise SlotBusyError(slot)
        if not prompt:
            raise EmptyPromptError()
        if len(prompt) > self._info.n_ctx_per_seq:
            raise PromptTooLongError(len(prompt), self._info.n_ctx_per_seq)
        if min(prompt) < 0 or max(prompt) >= self._info.n_vocab:
            raise TokenOutOfRangeError("the prompt holds a token outside the vocabulary")
        if any(not 0 <= t < self._info.n_vocab for t in params.logit_bias):
            raise TokenOutOfRangeError("logit_bias names a token outside the vocabulary")
        if params.grammar is not None and params.grammar.strip() and not _gbnf_parses(params.grammar):
            raise InvalidGrammarError("the grammar does not parse as GBNF with a 'root' rule")
        reused = self.cached_prefix_len(slot, prompt)
        s.cache = list(prompt[:reused])
        s.pending = list(prompt[reused:])
        s.prompt_len = len(prompt)
        text = bytes(t for t in prompt if t < 256).decode("utf-8", errors="replace")
        s.script = self._reply(text).encode("utf-8")
        s.produced = 0
        s.next_token = None
        s.active = True
        s.top_logprobs = params.top_logprobs
        self._prefill_order.append(slot)
        return reused

    def active_slots(self) -> int:
        """Slots running a sequence (for tests: what the engine holds, not the scheduler's view)."""
        return sum(s.active for s in self._slots)

    def slot_is_full(self, slot: int) -> bool:
        s = self._slots[slot]
        return s.active and len(s.cache) >= self._info.n_ctx_per_seq

    def step(self) -> list[StepOutput]:
        self.steps += 1
        if self._step_delay:
            time.sleep(self._step_delay)
        if self.broken:
            raise EngineError("simulated unusable context")
        if self.fail_next_step:
            self.fail_next_step = False
            raise EngineError("simulated decode failure")
        budget = self._info.n_batch
        out: list[StepOutput] = []
        n_ctx = self._info.n_ctx_per_seq
        # A generating slot feeds its last token back (now it holds a cell), unless it is full.
        sampling: list[int] = []
        for i, s in enumerate(self._slots):
            if s.next_token is not None and len(s.cache) < n_ctx:
                s.cache.append(s.next_token)
                sampling.append(i)
        budget -= len(sampling)
        order = self._prefill_order
        takes = self._prefill_policy.shares(budget, [len(self._slots[i].pending) for i in order])
        for i, take in zip(order, takes, strict=True):
            s = self._slots[i]
            if take > 0:
                chunk, s.pending = s.pending[:take], s.pending[take:]
                s.cache.extend(chunk)
                self.prefilled_tokens += len(chunk)
                if not s.pending:
                    sampling.append(i)
        self._prefill_order = [i for i in order if self._slots[i].pending]
        for i in sampling:
            s = self._slots[i]
            token = s.script[s.produced] if s.produced < len(s.script) else EOS
            s.produced += 1
            s.next_token = token
            lp = [TokenLogprob(token, -0.25), TokenLogprob((token + 1) % 256, -1.5)]
            top = tuple(lp[: s.top_logprobs]) if s.top_logprobs else ()
            out.append(StepOutput(i, token, -0.25 if s.top_logprobs is not None else None, top))
        return out

    def n_cached_cells(self) -> int:
        return sum(len(s.cache) for s in self._slots)

    def prefill_progress(self, slot: int) -> int:
        s = self._slots[slot]
        return s.prompt_len - len(s.pending) if s.active else 0

    def release(self, slot: int, *, keep_cache: bool = True) -> None:
        s = self._slots[slot]
        s.active = False
        s.pending = []
        s.next_token = None
        if slot in self._prefill_order:
            self._prefill_order.remove(slot)
        if not keep_cache:
            s.cache = []

    def reset(self) -> None:
        self.resets += 1
        self.broken = False
        self._prefill_order = []
        for s in self._slots:
            s.active = False
            s.pending = []
            s.next_token = None
            s.cache = []

    def make_embedder(self, n_ctx: int, *, pooling: Pooling | None = None) -> Embedder:
        """The embedder given to the constructor (the same one each time), whatever ``n_ctx``."""
        if self._embedder is None:
            raise EmbeddingsUnavailableError("this fake engine was given no embedder")
        return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        for s in self._slots:
            s.active = False
            s.cache = []
