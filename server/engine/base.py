"""The engine interface: what the scheduler needs from a model runtime.

An engine owns one model and ``n_slots`` sequence slots in one context. It is
driven by exactly one thread (the scheduler's engine thread), so no method here
is thread-safe and none needs to be. Text handling (detokenization, stop
strings) lives above the engine, in :mod:`server.runtime.textstream`; the engine deals
only in token ids and raw token bytes.

Errors the engine raises (the service maps them to the API's error tree; the
scheduler passes them on untouched)::

    EngineError                  a failure inside the engine
    ├── DecodeError              a step's decode failed; the engine stays usable
    ├── EmbeddingsUnavailableError  make_embedder(): this engine cannot embed
    └── SequenceRefusedError     begin() refused this sequence; nothing changed
        ├── InvalidGrammarError  the GBNF grammar does not parse
        ├── PromptTooLongError   more prompt tokens than a slot holds
        ├── EmptyPromptError     no prompt tokens at all
        ├── TokenOutOfRangeError a prompt or logit-bias token outside the vocabulary
        └── SlotBusyError        the slot already runs a sequence (a scheduler bug)

Life of a sequence::

    n_cached = engine.begin(slot, prompt_tokens, params)   # reuse cached prefix
    while ...:
        for out in engine.step():                          # one batched decode
            ...                                            # out.slot, out.token
    engine.release(slot)                                   # free its KV cells

Embeddings come from an :class:`Embedder` the engine makes on its own loaded model
(``engine.make_embedder(n_ctx)``): a context of its own, so it never takes a slot.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from server.engine.prompt_cache.stats import CacheStats


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings; defaults match OpenAI's where it has them."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    seed: int | None = None  # None = a fresh random seed per request
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, root rule "root"
    top_logprobs: int | None = None  # None = no logprobs; 0..20 alternatives


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float


@dataclass(frozen=True)
class StepOutput:
    """One sampled token for one slot, produced by one :meth:`Engine.step`."""

    slot: int
    token: int
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    id: str
    path: str
    n_ctx_per_seq: int  # context length each slot may use (prompt + generated)
    n_ctx_train: int
    n_vocab: int
    n_slots: int
    n_batch: int
    bos_token: int | None
    eos_token: int | None
    chat_template: str | None  # the Jinja template from the GGUF metadata, if any
    # Every end-of-generation token of the vocabulary, found once at load: the scheduler ends a
    # sequence on them, and ``ignore_eos`` bans them.
    eog_tokens: frozenset[int] = frozenset()
    architecture: str = "unknown"
    quantization: str = "unknown"
    kv_cache_bytes: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Where the weights went: llama.cpp buffer name ("CPU_Mapped", "RPC0[host:port]") -> bytes.
    placement: Mapping[str, int] = field(default_factory=dict)
    rpc_endpoints: tuple[str, ...] = ()  # the RPC workers holding layers of this model


class EngineError(Exception):
    """A failure inside the engine; the scheduler fails the affected sequences."""


class DecodeError(EngineError):
    """One batched decode failed; ``slots`` were in the batch and got no token this step.

    Their KV cells were rolled back to the state before the step, so the slots may
    go on (the failed tokens are scheduled again by the next step) or be released.
    """

    def __init__(self, message: str, *, code: int = -1, slots: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.slots = slots


class SequenceRefusedError(EngineError):
    """:meth:`Engine.begin` refused this sequence: the request is at fault, the slot is untouched."""


class EmbeddingsUnavailableError(EngineError):
    """:meth:`Engine.make_embedder`: this engine cannot make embeddings (a fake without an embedder)."""


class InvalidGrammarError(SequenceRefusedError):
    """The GBNF grammar does not parse (llama.cpp logs why at debug level)."""


class PromptTooLongError(SequenceRefusedError):
    def __init__(self, n_tokens: int, limit: int) -> None:
        super().__init__(f"the prompt has {n_tokens} tokens; a slot holds {limit}")
        self.n_tokens = n_tokens
        self.limit = limit


class EmptyPromptError(SequenceRefusedError):
    def __init__(self) -> None:
        super().__init__("the prompt is empty")


class TokenOutOfRangeError(SequenceRefusedError):
    """A prompt token or a logit-bias key outside ``0..n_vocab-1``."""


class SlotBusyError(SequenceRefusedError):
    def __init__(self, slot: int) -> None:
        super().__init__(f"slot {slot} is busy")
        self.slot = slot


class Embedder(Protocol):
    """Mean-pooled, L2-normalised embeddings of one input at a time, on the engine's model.

    Unlike the engine, an embedder may be called from any thread: it serialises its own calls.
    """

    @property
    def n_embd(self) -> int: ...

    @property
    def n_ctx(self) -> int:
        """The most tokens one input may have."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def embed(self, tokens: Sequence[int]) -> list[float]: ...

    def close(self) -> None:
        """Free what the embedder holds; idempotent (its engine closes it again on close)."""
        ...


# How an embedding is made from an input's token vectors: their mean, the first token's (BERT's CLS),
# or the last token's (decoder embedding models).
Pooling = Literal["mean", "cls", "last"]


class Engine(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (may be a partial UTF-8 sequence).

        Control tokens (``<|im_end|>``) render as ``b""`` unless ``special`` asks for their text.
        """
        ...

    def cached_prefix_len(self, slot: int, prompt: Sequence[int]) -> int:
        """How many leading tokens of ``prompt`` slot already holds in its KV cells."""
        ...

    def slot_loss(self, slot: int, prompt: Sequence[int]) -> int:
        """How many tokens held in the slot's cells would be lost for good if it began ``prompt``.

        Those past their common prefix with ``prompt``, unless a prompt cache keeps them; 0 for an
        empty slot. The scheduler gives a new prompt the slot whose loss costs least.
        """
        ...

    def cache_stats(self) -> CacheStats | None:
        """The prompt cache's counters (None: no prompt cache). Safe to call from any thread."""
        ...

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        """Start a sequence in a free slot; returns how many prompt tokens were reused.

        Reused tokens come from the slot's cells, another slot's, or a prompt cache; each counts
        as cached in the response's usage.

        Raises a :class:`SequenceRefusedError` (and leaves the slot as it was) for a
        sequence it cannot run.

        The prompt is prefilled by later :meth:`step` calls (chunked), and the
        first sampled token arrives from the step that consumes its last chunk.
        """
        ...

    def step(self) -> list[StepOutput]:
        """Run one batched decode over every active slot; return sampled tokens.

        Raises :class:`EngineError` when the decode fails; the engine stays usable.
        """
        ...

    def slot_is_full(self, slot: int) -> bool:
        """True when the slot holds ``n_ctx_per_seq`` tokens and cannot decode another."""
        ...

    def n_cached_cells(self) -> int:
        """KV cells in use, for the kv-cache usage gauge."""
        ...

    def prefill_progress(self, slot: int) -> int:
        """How many of the running sequence's prompt tokens are in its cells, reused ones included.

        The prompt's length once its prefill is done; 0 for an idle slot. The scheduler reads it
        after each step, only for requests that asked for prompt progress.
        """
        ...

    def release(self, slot: int, *, keep_cache: bool = True) -> None:
        """End the slot's sequence. With ``keep_cache`` its tokens stay for prefix reuse."""
        ...

    def reset(self) -> None:
        """Recreate the context: every slot ends and every KV cell is freed; the model stays loaded.

        The scheduler calls it after a failed step, once it has failed that step's requests, so that
        a context the failure left unusable serves again.
        """
        ...

    def make_embedder(self, n_ctx: int, *, pooling: Pooling | None = None) -> Embedder:
        """A new embedder on this engine's loaded model, holding inputs of up to ``n_ctx`` tokens,
        pooling each input's token vectors as ``pooling`` says (None: as the model's file says).

        Raises :class:`EmbeddingsUnavailableError` when the engine cannot embed. Unlike the other
        methods it may be called from any thread (the service makes the embedder in a worker
        thread): it reads the model and touches no slot. The engine closes the embedders it made
        when it closes.
        """
        ...

    def close(self) -> None: ...
