"""The generation pipeline that chat and completions share (and the APIs after them).

One request goes through it once::

    prepare   (a worker thread)  validate -> render -> tokenize -> a prepared request
    submit                       one scheduler request per choice: all of them, or none
    events                       every choice's events in arrival order, errors as API errors
    finish                       usage and finish reasons

:class:`Pipeline` holds what every service of one model shares: the engine's facts, the
scheduler, the request limits, the model id and fingerprint. The services build their
prepared requests with it and turn its events into their own wire shapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

from server.engine.base import (
    Engine,
    FinishReason,
    InvalidGrammarError,
    ModelInfo,
    PromptTooLongError,
    SequenceRefusedError,
    TokenOutOfRangeError,
)
from server.errors import (
    ContextLengthExceededError,
    GenerationError,
    InvalidRequestError,
    LlamaserveError,
)
from server.protocol import LOGGED_FIELDS, PromptTokensDetails, SamplingFields, Usage
from server.protocol.progress import PromptProgress, QueuePosition
from server.runtime.events import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    PrefillEvent,
    ProgressEvent,
    QueuedEvent,
    TokenEvent,
)
from server.runtime.scheduler import RequestHandle, Scheduler
from server.services.limits import RequestLimits
from server.services.sampling import choice_params, stop_strings, token_budget

log = logging.getLogger(__name__)

ChunkT = TypeVar("ChunkT", bound=BaseModel)
ResponseT = TypeVar("ResponseT", covariant=True)
T = TypeVar("T")
Chunk = dict[str, object]
ChoiceEvent = tuple[int, TokenEvent | FinishEvent]
StreamEvent = tuple[int, TokenEvent | FinishEvent | ProgressEvent]
WireFinish = Literal["stop", "length"]


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the scheduler needs it: an API key's short id and its default priority."""

    key_id: str = ""  # "" = no API key (all such requests share one place in the fair share)
    priority: int = 0  # for requests that give no ``priority`` of their own


ANONYMOUS = Caller()


@dataclass(frozen=True)
class PreparedGeneration:
    """A checked request, ready to submit: its prompts as tokens and one scheduler request per choice.

    Choice ``p * n + i`` is prompt ``p``'s ``i``-th, as OpenAI numbers them. ``requests`` is empty
    when there is nothing to generate (``max_tokens`` 0).
    """

    request_id: str
    prompts: list[list[int]]
    n: int
    requests: list[GenerationRequest]
    # Which request field a grammar came from, so that a grammar the engine refuses is named.
    grammar_param: str | None = None

    @property
    def n_choices(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class ChoiceText:
    """What one choice accumulated for a non-streaming response."""

    parts: list[str] = field(default_factory=list)
    finish: FinishEvent | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class StreamComment:
    """An SSE comment line for the stream (``: <text>``): what OpenAI clients skip by design."""

    text: str


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """A chunk already serialised to JSON (:mod:`server.services.encoded_chunks`), written as it is."""

    json: str
    event: str | None = None  # the SSE event name, for the framings that name every event


StreamItem = Chunk | StreamComment | EncodedChunk


def wants_progress(req: SamplingFields) -> bool:
    """``stream_options.include_progress`` (the limits refuse stream_options without ``stream``)."""
    return bool(req.stream and req.stream_options and req.stream_options.include_progress)


def progress_comment(index: int, ev: ProgressEvent) -> StreamComment:
    """Our ``include_progress`` extension's line for one progress event (server/protocol/progress.py)."""
    if isinstance(ev, QueuedEvent):
        body = QueuePosition(index=index, position=ev.position).model_dump()
        return StreamComment("queued " + json.dumps(body, separators=(",", ":")))
    wire = PromptProgress(
        index=index, total=ev.total, cached=ev.cached, processed=ev.processed, time_ms=round(ev.seconds * 1000)
    )
    return StreamComment("progress " + json.dumps(wire.model_dump(), separators=(",", ":")))


class Generation(Protocol[ResponseT]):
    """A submitted request, as a service hands it to its route: a response, or stream chunks."""

    @property
    def streaming(self) -> bool: ...

    async def response(self) -> ResponseT: ...

    def chunks(self) -> AsyncIterator[StreamItem]: ...


class _Streamable(Protocol):
    @property
    def stream(self) -> bool: ...


PreparedT = TypeVar("PreparedT", bound=_Streamable)


class Submitted(Generic[PreparedT]):
    """What every service's Generation holds: its prepared request and a handle per choice."""

    def __init__(self, pipeline: Pipeline, prepared: PreparedT, handles: Sequence[RequestHandle]) -> None:
        self._pipeline = pipeline
        self.prepared = prepared
        self._handles = handles

    @property
    def streaming(self) -> bool:
        return self.prepared.stream


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        *,
        model_id: str,
        limits: RequestLimits | None = None,
        created: int | None = None,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.model_id = model_id
        self.limits = limits or RequestLimits()
        self.created = created or int(time.time())
        self.fingerprint = f"fp_llamaserve_{secrets.token_hex(4)}"

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    # ---- prepare ------------------------------------------------------------------------------

    @staticmethod
    async def off_loop(work: Callable[[], T]) -> T:
        """Run ``work`` (rendering, tokenizing: it grows with the input) in a worker thread.

        The llama.cpp vocabulary is read-only once loaded, so tokenizing beside the engine
        thread's decode is safe; the event loop meanwhile serves every other stream.
        """
        return await asyncio.to_thread(work)

    @staticmethod
    def log_caller(kind: str, req: SamplingFields, request_id: str) -> None:
        extra = req.model_extra or {}
        who = {name: getattr(req, name, None) or extra.get(name) for name in LOGGED_FIELDS}
        who = {k: v for k, v in who.items() if v}
        if who:
            log.info("%s %s for %s", kind, request_id, ", ".join(f"{k}={v!r}" for k, v in who.items()))

    def prepare(
        self,
        req: SamplingFields,
        prompts: list[list[int]],
        *,
        request_id: str,
        max_tokens: int | None,
        prompt_param: str,
        n: int,
        top_logprobs: int | None,
        grammar: str | None,
        grammar_param: str | None = None,
        caller: Caller = ANONYMOUS,
        progress: bool = False,
    ) -> PreparedGeneration:
        """Size each prompt's choices to the context and give each its sampling settings."""
        params = choice_params(req, self.info, n, top_logprobs=top_logprobs, grammar=grammar)
        stop = stop_strings(req)
        priority = req.priority if req.priority is not None else caller.priority
        requests: list[GenerationRequest] = []
        for prompt in prompts:
            budget = token_budget(len(prompt), max_tokens, self.info.n_ctx_per_seq, param=prompt_param)
            if budget == 0:
                continue
            requests += [
                GenerationRequest(
                    prompt, p, budget, stop, request_id, priority=priority, key_id=caller.key_id, progress=progress
                )
                for p in params
            ]
        return PreparedGeneration(request_id, prompts, n, requests, grammar_param)

    # ---- submit -------------------------------------------------------------------------------

    def submit(self, prepared: PreparedGeneration) -> list[RequestHandle]:
        """Submit every choice, or none: a refusal part way cancels those already queued."""
        handles: list[RequestHandle] = []
        try:
            for r in prepared.requests:
                handles.append(self.scheduler.submit(r))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return handles

    # ---- events -------------------------------------------------------------------------------

    async def events(
        self, prepared: PreparedGeneration, handles: Sequence[RequestHandle]
    ) -> AsyncIterator[ChoiceEvent]:
        """:meth:`stream_events` without progress events (for those who never asked for them)."""
        try:
            async with aclosing(self.stream_events(prepared, handles)) as events:
                async for i, ev in events:
                    if not isinstance(ev, QueuedEvent | PrefillEvent):
                        yield i, ev
        finally:
            for h in handles:
                h.cancel()

    async def stream_events(
        self, prepared: PreparedGeneration, handles: Sequence[RequestHandle]
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every choice's events in arrival order, tagged with the choice index; progress events
        too, for requests that asked for them (``progress``).

        Ends after the last choice finishes; an error is raised as the API's error. Leaving
        early (or an error) cancels every choice, which frees their slots at the next step.
        """
        try:
            if len(handles) == 1:  # one choice needs no merging task
                async for ev in handles[0].events():
                    yield 0, self._checked(ev, prepared)
            else:
                async for i, ev in _merged(handles):
                    yield i, self._checked(ev, prepared)
        finally:
            for h in handles:
                h.cancel()

    @staticmethod
    def _checked(
        ev: TokenEvent | FinishEvent | ErrorEvent | ProgressEvent, prepared: PreparedGeneration
    ) -> TokenEvent | FinishEvent | ProgressEvent:
        if isinstance(ev, ErrorEvent):
            raise api_error(ev.error, grammar_param=prepared.grammar_param)
        return ev

    # ---- finish -------------------------------------------------------------------------------

    @staticmethod
    def usage(prepared: PreparedGeneration, finishes: Sequence[FinishEvent | None]) -> Usage:
        """Each prompt counts once however many choices it has (as OpenAI counts it).

        The choice that computed a prompt reports the real cache hits; the others reused its
        cells, so per prompt the least is the truth.
        """
        n = prepared.n
        cached = 0
        for p in range(len(prepared.prompts)):
            cached += min((f.cached_tokens for f in finishes[p * n : (p + 1) * n] if f is not None), default=0)
        prompt_tokens = sum(len(p) for p in prepared.prompts)
        completion = sum(f.completion_tokens for f in finishes if f is not None)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )

    @staticmethod
    def finish_reason(reason: FinishReason | None) -> WireFinish:
        # A choice with nothing to generate (max_tokens 0) ended on its length.
        return "stop" if reason is FinishReason.STOP else "length"

    def wire_chunk(
        self,
        cls: type[ChunkT],
        request_id: str,
        created: int,
        choices: Sequence[object],
        usage: Usage | None,
        *,
        include_usage: bool,
    ) -> Chunk:
        """One stream chunk as a dict; ``usage`` is sent (null until the last) only when asked for."""
        chunk = cls(
            id=request_id,
            created=created,
            model=self.model_id,
            system_fingerprint=self.fingerprint,
            choices=choices,
            usage=usage,
        ).model_dump()
        if not include_usage:
            chunk.pop("usage")
        return chunk

    def token_text(self, token: int) -> tuple[str, list[int]]:
        raw = self.engine.token_bytes(token)
        return raw.decode("utf-8", errors="replace"), list(raw)

    @staticmethod
    def now() -> int:
        return int(time.time())


async def _merged(handles: Sequence[RequestHandle]) -> AsyncIterator[tuple[int, Event]]:
    merged: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(i: int, handle: RequestHandle) -> None:
        async for ev in handle.events():
            await merged.put((i, ev))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            i, ev = await merged.get()
            if isinstance(ev, FinishEvent | ErrorEvent):
                remaining -= 1
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()


def api_error(exc: Exception, *, grammar_param: str | None = None) -> LlamaserveError:
    """An error from the scheduler as the API reports it: the engine's typed errors become 4xx/5xx."""
    if isinstance(exc, LlamaserveError):  # the scheduler's own: queue full, timeout, shutting down
        return exc
    if isinstance(exc, InvalidGrammarError):
        param = grammar_param or "grammar"
        return InvalidRequestError(f"The grammar from '{param}' was refused by llama.cpp: {exc}.", param=param)
    if isinstance(exc, PromptTooLongError):
        return ContextLengthExceededError(exc.n_tokens, exc.limit, prompt_tokens=exc.n_tokens)
    if isinstance(exc, TokenOutOfRangeError):
        return InvalidRequestError(f"The request holds a token outside the vocabulary: {exc}.")
    if isinstance(exc, SequenceRefusedError):
        # Everything else begin() refuses was checked before submitting: reaching here is our bug.
        log.error("the engine refused a checked request: %s", exc)
        return GenerationError(f"The request could not start: {exc}.")
    return GenerationError(f"The engine failed: {exc}")
