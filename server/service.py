"""Wire request -> prompt + SamplingParams -> scheduler -> wire response or chunks.

Routes call :class:`ChatService`; it knows the OpenAI wire models and the
scheduler, and nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from server.chat_template import CHATML, JinjaChatTemplate
from server.engine.base import Engine, FinishReason, SamplingParams
from server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedFieldError,
)
from server.protocol import (
    UNSUPPORTED_CHAT_FIELDS,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    Model,
    ModelList,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobEntry,
    TopLogprob,
    Usage,
)
from server.scheduler import ErrorEvent, FinishEvent, GenerationRequest, RequestHandle, Scheduler, TokenEvent

log = logging.getLogger(__name__)

# llama.cpp's defaults for the samplers OpenAI does not have; they keep small models coherent
# at OpenAI's default temperature of 1.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


@dataclass
class _Choice:
    """What one choice accumulated, for a non-streaming response."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobEntry] = field(default_factory=list)
    finish: FinishEvent | None = None


class ChatService:
    def __init__(self, engine: Engine, scheduler: Scheduler, *, model_id: str, created: int | None = None) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.model_id = model_id
        self.created = created or int(time.time())
        self.fingerprint = f"fp_llamaserve_{secrets.token_hex(4)}"
        info = engine.info
        self._bos_text = self._token_text(info.bos_token)
        self.template = JinjaChatTemplate(
            info.chat_template or CHATML, bos_token=self._bos_text, eos_token=self._token_text(info.eos_token)
        )

    def _token_text(self, token: int | None) -> str:
        if token is None:
            return ""
        return self.engine.token_bytes(token).decode("utf-8", errors="replace")

    # ---- models -----------------------------------------------------------------------------

    def list_models(self) -> ModelList:
        return ModelList(data=[Model(id=self.model_id, created=self.created)])

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise ModelNotFoundError(model)

    # ---- request preparation ----------------------------------------------------------------

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        plain = []
        for m in messages:
            if isinstance(m.content, list):
                parts = []
                for p in m.content:
                    if p.type != "text" or p.text is None:
                        raise InvalidRequestError(
                            f"Content parts of type '{p.type}' are not supported: this model reads text only.",
                            param="messages",
                        )
                    parts.append(p.text)
                content: str | None = "".join(parts)
            else:
                content = m.content
            plain.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        return self.template.render(plain, add_generation_prompt=True)

    def tokenize_prompt(self, text: str) -> list[int]:
        # A template that writes the BOS text itself must not get a second BOS from the tokenizer.
        has_bos = bool(self._bos_text) and text.startswith(self._bos_text)
        return self.engine.tokenize(text, add_special=not has_bos, parse_special=True)

    def _validate_chat(self, req: ChatCompletionRequest) -> None:
        extra = req.model_extra or {}
        for name in UNSUPPORTED_CHAT_FIELDS:
            if extra.get(name) is not None:
                raise UnsupportedFieldError(name)
        if req.tools:
            raise UnsupportedFieldError("tools", "(tool calling) is not supported yet by this server")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise UnsupportedFieldError("response_format", "other than 'text' is not supported yet")
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        if req.stream_options is not None and not req.stream:
            raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")

    def sampling_params(self, req: ChatCompletionRequest, choice: int) -> SamplingParams:
        bias: dict[int, float] = {}
        for key, value in (req.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequestError(f"logit_bias key '{key}' is not a token id.", param="logit_bias") from None
            if not 0 <= token < self.engine.info.n_vocab:
                raise InvalidRequestError(f"logit_bias token {token} is outside the vocabulary.", param="logit_bias")
            if not -100 <= value <= 100:
                raise InvalidRequestError("logit_bias values must be between -100 and 100.", param="logit_bias")
            bias[token] = value
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
            logit_bias=bias,
            grammar=req.grammar,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        )

    def prepare_chat(self, req: ChatCompletionRequest, request_id: str) -> list[GenerationRequest]:
        self.check_model(req.model)
        self._validate_chat(req)
        prompt = self.tokenize_prompt(self.render_prompt(req.messages))
        return self._generation_requests(req, prompt, request_id, req.max_completion_tokens or req.max_tokens)

    def _generation_requests(
        self, req: ChatCompletionRequest, prompt: list[int], request_id: str, max_tokens: int | None
    ) -> list[GenerationRequest]:
        n_ctx = self.engine.info.n_ctx_per_seq
        if len(prompt) >= n_ctx:
            raise ContextLengthExceededError(len(prompt) + (max_tokens or 0), n_ctx)
        room = n_ctx - len(prompt)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise InvalidRequestError("'stop' takes at most 4 sequences.", param="stop")
        return [
            GenerationRequest(
                prompt_tokens=prompt,
                params=self.sampling_params(req, i),
                max_tokens=min(max_tokens or room, room),
                stop=stop,
                request_id=request_id,
            )
            for i in range(req.n or 1)
        ]

    def submit(self, requests: Sequence[GenerationRequest]) -> list[RequestHandle]:
        handles: list[RequestHandle] = []
        try:
            for r in requests:
                handles.append(self.scheduler.submit(r))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return handles

    # ---- responses --------------------------------------------------------------------------

    def _logprob_entry(self, ev: TokenEvent) -> TokenLogprobEntry:
        def text(tok: int) -> tuple[str, list[int]]:
            raw = self.engine.token_bytes(tok)
            return raw.decode("utf-8", errors="replace"), list(raw)

        tok_text, tok_bytes = text(ev.token)
        tops = []
        for alt in ev.top_logprobs:
            alt_text, alt_bytes = text(alt.token)
            tops.append(TopLogprob(token=alt_text, logprob=alt.logprob, bytes=alt_bytes))
        return TokenLogprobEntry(token=tok_text, logprob=ev.logprob or 0.0, bytes=tok_bytes, top_logprobs=tops)

    @staticmethod
    def _usage(finishes: Sequence[FinishEvent]) -> Usage:
        prompt = finishes[0].prompt_tokens if finishes else 0
        completion = sum(f.completion_tokens for f in finishes)
        cached = finishes[0].cached_tokens if finishes else 0
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )

    @staticmethod
    def _finish_reason(reason: FinishReason) -> str:
        return "length" if reason is FinishReason.LENGTH else "stop"

    async def complete_chat(
        self, req: ChatCompletionRequest, handles: Sequence[RequestHandle], request_id: str
    ) -> ChatCompletion:
        choices = [_Choice() for _ in handles]

        async def collect(i: int, handle: RequestHandle) -> None:
            async for ev in handle.events():
                if isinstance(ev, TokenEvent):
                    choices[i].text.append(ev.text)
                    if req.logprobs:
                        choices[i].logprobs.append(self._logprob_entry(ev))
                elif isinstance(ev, FinishEvent):
                    choices[i].text.append(ev.text)
                    choices[i].finish = ev
                else:
                    raise ev.error

        try:
            async with asyncio.TaskGroup() as tg:
                for i, h in enumerate(handles):
                    tg.create_task(collect(i, h))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            for h in handles:
                h.cancel()
        finishes = [c.finish for c in choices if c.finish is not None]
        return ChatCompletion(
            id=request_id,
            created=int(time.time()),
            model=self.model_id,
            system_fingerprint=self.fingerprint,
            choices=[
                ChatChoice(
                    index=i,
                    message=ResponseMessage(content="".join(c.text)),
                    logprobs=ChoiceLogprobs(content=c.logprobs) if req.logprobs else None,
                    finish_reason=self._finish_reason(c.finish.reason) if c.finish else "stop",  # type: ignore[arg-type]
                )
                for i, c in enumerate(choices)
            ],
            usage=self._usage(finishes),
        )

    async def stream_chat(
        self, req: ChatCompletionRequest, handles: Sequence[RequestHandle], request_id: str
    ) -> AsyncIterator[dict[str, object]]:
        """Yield chunk dicts ready for JSON; errors after the start are raised to the route."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        created = int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> dict[str, object]:
            c = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=self.model_id,
                system_fingerprint=self.fingerprint,
                choices=choices,
                usage=usage,
            ).model_dump()
            if not include_usage:
                c.pop("usage")
            for ch in c["choices"]:
                ch["delta"] = {k: v for k, v in ch["delta"].items() if v is not None}
            return c

        merged: asyncio.Queue[tuple[int, TokenEvent | FinishEvent | ErrorEvent]] = asyncio.Queue()

        async def pump(i: int, handle: RequestHandle) -> None:
            async for ev in handle.events():
                await merged.put((i, ev))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        try:
            for i in range(len(handles)):
                yield chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))])
            finishes: list[FinishEvent] = []
            while len(finishes) < len(handles):
                i, ev = await merged.get()
                if isinstance(ev, ErrorEvent):
                    raise ev.error
                if isinstance(ev, TokenEvent):
                    lp = ChoiceLogprobs(content=[self._logprob_entry(ev)]) if req.logprobs else None
                    if ev.text or lp is not None:
                        yield chunk([ChunkChoice(index=i, delta=ChunkDelta(content=ev.text), logprobs=lp)])
                    continue
                finishes.append(ev)
                if ev.text:
                    yield chunk([ChunkChoice(index=i, delta=ChunkDelta(content=ev.text))])
                reason = self._finish_reason(ev.reason)
                yield chunk([ChunkChoice(index=i, delta=ChunkDelta(), finish_reason=reason)])  # type: ignore[arg-type]
            if include_usage:
                yield chunk([], self._usage(finishes))
        finally:
            for t in tasks:
                t.cancel()
            for h in handles:
                h.cancel()
