r"""What flows between the services and the scheduler: requests in, events out, and the hooks metrics use.

A :class:`GenerationRequest` is one sequence (one choice); the scheduler answers it with
:class:`TokenEvent`\ s and then exactly one :class:`FinishEvent` or :class:`ErrorEvent`. A request
that asks for ``progress`` also gets a :class:`QueuedEvent` whenever its place in the wait queue
changes and a :class:`PrefillEvent` per prefill chunk of its prompt, before its first token.
An :class:`ErrorEvent` carries the exception as raised: an engine error (the service maps
it to the API's error), or one of the scheduler's own refusals from :mod:`server.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from server.engine.base import FinishReason, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class GenerationRequest:
    prompt_tokens: Sequence[int]
    params: SamplingParams
    max_tokens: int
    stop: Sequence[str] = ()
    request_id: str = ""
    priority: int = 0  # lower is sooner; ties go by arrival
    key_id: str = ""  # the API key's short id, for fair share between keys ("" = no key)
    progress: bool = False  # send QueuedEvent / PrefillEvent (stream_options.include_progress)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it made final (often "", sometimes several chars)."""

    token: int
    text: str
    token_bytes: bytes
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    text: str  # held-back text released at the end (may be "")
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stop_sequence: str | None = None  # the stop string that ended a STOP, if one did


@dataclass(frozen=True)
class ErrorEvent:
    error: Exception


@dataclass(frozen=True)
class QueuedEvent:
    """The request waits for a slot; ``position`` 1 takes the next one that frees."""

    position: int


@dataclass(frozen=True)
class PrefillEvent:
    """How far the prompt's prefill is: ``processed`` of ``total`` tokens are in the slot's cells.

    ``processed`` counts the ``cached`` (reused) tokens too; it reaches ``total`` with the chunk
    that also samples the first token.
    """

    total: int
    cached: int
    processed: int
    seconds: float  # since the request took its slot


ProgressEvent = QueuedEvent | PrefillEvent
Event = TokenEvent | FinishEvent | ErrorEvent | QueuedEvent | PrefillEvent


class SchedulerHooks(Protocol):
    """Observation points for metrics; called from the engine thread unless noted."""

    def request_queued(self) -> None: ...  # asyncio thread
    def request_rejected(self, reason: str) -> None: ...  # asyncio thread
    def request_started(self, queue_seconds: float, prompt_tokens: int, cached_tokens: int, priority: int) -> None: ...
    def first_token(self, ttft_seconds: float, prompt_seconds: float) -> None: ...
    def token(self, inter_token_seconds: float) -> None: ...
    def request_finished(
        self, reason: FinishReason, prompt_tokens: int, completion_tokens: int, e2e_seconds: float
    ) -> None: ...
    def step_done(self, slots_busy: int, waiting: int, kv_cells: int, step_error: bool) -> None: ...


class NoHooks:
    def request_queued(self) -> None:
        pass

    def request_rejected(self, reason: str) -> None:
        pass

    def request_started(self, queue_seconds: float, prompt_tokens: int, cached_tokens: int, priority: int) -> None:
        pass

    def first_token(self, ttft_seconds: float, prompt_seconds: float) -> None:
        pass

    def token(self, inter_token_seconds: float) -> None:
        pass

    def request_finished(
        self, reason: FinishReason, prompt_tokens: int, completion_tokens: int, e2e_seconds: float
    ) -> None:
        pass

    def step_done(self, slots_busy: int, waiting: int, kv_cells: int, step_error: bool) -> None:
        pass
