"""What chat and legacy completions share: sampling settings, token budgets, submission, events.

:class:`GenerationService` turns the OpenAI sampling fields into
:class:`~server.engine.base.SamplingParams`, sizes each request to the context,
submits one scheduler request per choice, and merges the choices' token events
back into one ordered stream. The chat and completions services build on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from pydantic import BaseModel

from server.engine.base import (
    Engine,
    FinishReason,
    InvalidGrammarError,
    PromptTooLongError,
    SamplingParams,
    SequenceRefusedError,
)
from server.errors import (
    ContextLengthExceededError,
    GenerationError,
    InvalidRequestError,
    LlamaserveError,
    ModelNotFoundError,
)
from server.protocol import LOGGED_FIELDS, PromptTokensDetails, SamplingFields, Usage
from server.runtime.events import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler

log = logging.getLogger(__name__)

# llama.cpp's defaults for the samplers OpenAI does not have; they keep small models coherent
# at OpenAI's default temperature of 1.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
MAX_STOP_STRINGS = 4


ChunkT = TypeVar("ChunkT", bound=BaseModel)


class GenerationService:
    def __init__(self, engine: Engine, scheduler: Scheduler, *, model_id: str, fingerprint: str, created: int) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.created = created
        self._eog_ban: dict[int, float] | None = None  # computed on first use: it walks the vocabulary

    def wire_chunk(
        self,
        cls: type[ChunkT],
        request_id: str,
        created: int,
        choices: Sequence[object],
        usage: Usage | None,
        *,
        include_usage: bool,
    ) -> dict[str, object]:
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

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise ModelNotFoundError(model)

    @staticmethod
    def log_caller(kind: str, req: SamplingFields, request_id: str) -> None:
        extra = req.model_extra or {}
        who = {name: getattr(req, name, None) or extra.get(name) for name in LOGGED_FIELDS}
        who = {k: v for k, v in who.items() if v}
        if who:
            log.info("%s %s for %s", kind, request_id, ", ".join(f"{k}={v!r}" for k, v in who.items()))

    # ---- request preparation ----------------------------------------------------------------

    def logit_bias(self, req: SamplingFields) -> dict[int, float]:
        bias: dict[int, float] = {}
        for key, value in (req.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequestError(f"logit_bias key '{key}' is not a token id.", param="logit_bias") from None
            if not 0 <= token < self.engine.info.n_vocab:
                raise InvalidRequestError(
                    f"logit_bias token {token} is outside the vocabulary (0..{self.engine.info.n_vocab - 1}).",
                    param="logit_bias",
                )
            bias[token] = value
        return bias

    def sampling_params(
        self, req: SamplingFields, choice: int, *, top_logprobs: int | None, grammar: str | None
    ) -> SamplingParams:
        if req.ignore_eos and grammar is not None:
            # A grammar that is complete allows only end-of-generation: banning it leaves nothing.
            raise InvalidRequestError(
                "'ignore_eos' cannot be combined with a grammar, a JSON response_format or a forced tool call.",
                param="ignore_eos",
            )
        # Choice i samples with seed+i: reproducible, yet the n choices differ.
        seed = None if req.seed is None else (req.seed + choice) & 0xFFFFFFFF
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=DEFAULT_TOP_K if req.top_k is None else req.top_k,
            min_p=DEFAULT_MIN_P if req.min_p is None else req.min_p,
            seed=seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
            logit_bias={**self.logit_bias(req), **self.eog_ban()} if req.ignore_eos else self.logit_bias(req),
            grammar=grammar,
            top_logprobs=top_logprobs,
        )

    def eog_ban(self) -> dict[int, float]:
        """A logit bias that rules out every end-of-generation token of the vocabulary."""
        if self._eog_ban is None:
            self._eog_ban = {t: float("-inf") for t in self.engine.info.eog_tokens}
        return self._eog_ban

    @staticmethod
    def stop_strings(req: SamplingFields) -> list[str]:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError(f"'stop' takes at most {MAX_STOP_STRINGS} sequences.", param="stop")
        return [s for s in stop if s]

    def token_budget(self, prompt_len: int, requested: int | None, *, param: str) -> int:
        """Tokens a choice may generate: what was asked for, capped by the room left in the context."""
        n_ctx = self.engine.info.n_ctx_per_seq
        if prompt_len >= n_ctx:
            raise ContextLengthExceededError(
                prompt_len + (requested or 1), n_ctx, param=param, prompt_tokens=prompt_len
            )
        room = n_ctx - prompt_len
        return room if requested is None else min(requested, room)

    def generation_requests(
        self,
        req: SamplingFields,
        prompt: list[int],
        *,
        request_id: str,
        max_tokens: int,
        n: int,
        top_logprobs: int | None,
        grammar: str | None,
        first_choice: int = 0,
    ) -> list[GenerationRequest]:
        stop = self.stop_strings(req)
        return [
            GenerationRequest(
                prompt_tokens=prompt,
                params=self.sampling_params(req, first_choice + i, top_logprobs=top_logprobs, grammar=grammar),
                max_tokens=max_tokens,
                stop=stop,
                request_id=request_id,
            )
            for i in range(n)
        ]

    def submit(self, requests: Sequence[GenerationRequest]) -> list[RequestHandle]:
        """Submit every choice, or none: a refusal part way cancels those already queued."""
        handles: list[RequestHandle] = []
        try:
            for r in requests:
                handles.append(self.scheduler.submit(r))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return handles

    # ---- events -----------------------------------------------------------------------------

    @staticmethod
    async def merged_events(
        handles: Sequence[RequestHandle],
    ) -> AsyncIterator[tuple[int, TokenEvent | FinishEvent]]:
        """Every choice's events in arrival order, tagged with the choice index.

        Ends after the last choice finishes; an error event is raised. Leaving early
        (or an error) cancels every choice, which frees their slots.
        """
        merged: asyncio.Queue[tuple[int, TokenEvent | FinishEvent | ErrorEvent]] = asyncio.Queue()

        async def pump(i: int, handle: RequestHandle) -> None:
            async for ev in handle.events():
                await merged.put((i, ev))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        try:
            remaining = len(handles)
            while remaining:
                i, ev = await merged.get()
                if isinstance(ev, ErrorEvent):
                    raise api_error(ev.error)
                if isinstance(ev, FinishEvent):
                    remaining -= 1
                yield i, ev
        finally:
            for t in tasks:
                t.cancel()
            for h in handles:
                h.cancel()

    # ---- responses --------------------------------------------------------------------------

    def token_text(self, token: int) -> tuple[str, list[int]]:
        raw = self.engine.token_bytes(token)
        return raw.decode("utf-8", errors="replace"), list(raw)

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )

    @staticmethod
    def finish_reason(reason: FinishReason) -> str:
        return "length" if reason is FinishReason.LENGTH else "stop"

    @staticmethod
    def now() -> int:
        return int(time.time())


def api_error(exc: Exception) -> Exception:
    """An error from the scheduler as the API reports it: engine errors become the typed API errors."""
    if isinstance(exc, LlamaserveError):
        return exc
    if isinstance(exc, InvalidGrammarError):
        return InvalidRequestError(f"The grammar is not valid GBNF: {exc}.", param="grammar")
    if isinstance(exc, PromptTooLongError):
        return ContextLengthExceededError(exc.n_tokens, exc.limit, prompt_tokens=exc.n_tokens)
    if isinstance(exc, SequenceRefusedError):
        return InvalidRequestError(f"The request could not start: {exc}.")
    return GenerationError(f"The engine failed: {exc}")
