"""Chat: wire request -> prompt + SamplingParams -> scheduler -> wire response or chunks.

Routes call :class:`ChatService`; it knows the OpenAI wire models and the
scheduler, and nothing of HTTP. It also holds the legacy completions and the
embeddings services, which share its engine and scheduler.

Tool calling hooks in at two places: :meth:`ChatService.parse_choice` turns a
finished choice's text into ``(content, tool_calls)``, and
:meth:`ChatService.choice_streamer` gives the streaming counterpart.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from server.engine.base import Engine
from server.errors import InvalidRequestError, UnsupportedFieldError
from server.prompting.chat_template import ChatTemplate, render_chat, select_template
from server.prompting.grammar import JSON_OBJECT_GBNF, InvalidSchemaError, json_schema_to_gbnf
from server.prompting.tools import ToolChoiceStreamer, ToolPlan, plan_tools, response_message_parts
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
    DetokenizeRequest,
    DetokenizeResponse,
    Model,
    ModelList,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseMessage,
    TokenizeRequest,
    TokenizeResponse,
    TokenLogprobEntry,
    TokenPiece,
    ToolCall,
    TopLogprob,
    Usage,
)
from server.runtime.events import FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle, Scheduler
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingsService
from server.services.limits import RequestLimits, check_chat_request
from server.services.pipeline import GenerationService

log = logging.getLogger(__name__)


@dataclass
class _Choice:
    """What one choice accumulated, for a non-streaming response."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobEntry] = field(default_factory=list)
    finish: FinishEvent | None = None


class ChoiceStreamer:
    """Turns one choice's text pieces into chunk deltas; plain text passes straight through.

    Tool calling replaces it (via :meth:`ChatService.choice_streamer`) with one that holds
    back text which may be a tool call and emits ``tool_calls`` deltas instead.
    """

    def push(self, text: str) -> list[ChunkDelta]:
        return [ChunkDelta(content=text)] if text else []

    def finish(self, text: str) -> tuple[list[ChunkDelta], bool]:
        """The last text; returns the deltas and whether the choice made tool calls."""
        return self.push(text), False


def template_for_engine(
    engine: Engine, override: str | None = None, *, bos_token: str | None = None, eos_token: str | None = None
) -> ChatTemplate:
    """The template for the engine's model (compiled once: keep it for the model's lifetime).

    ``bos_token``/``eos_token``: the texts Jinja templates get (default: the tokens' bytes).
    """
    info = engine.info

    def token_text(token: int | None) -> str:
        return "" if token is None else engine.token_bytes(token).decode("utf-8", errors="replace")

    def has_special_token(text: str) -> bool:
        return len(engine.tokenize(text, add_special=False, parse_special=True)) == 1

    template = select_template(
        info.chat_template,
        override=override,
        has_special_token=has_special_token,
        bos_token=token_text(info.bos_token) if bos_token is None else bos_token,
        eos_token=token_text(info.eos_token) if eos_token is None else eos_token,
    )
    log.info("chat template: %s (tools: %s format)", template.name, template.tool_style)
    return template


class ChatService(GenerationService):
    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        *,
        model_id: str,
        created: int | None = None,
        limits: RequestLimits | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.limits = limits or RequestLimits()
        super().__init__(
            engine,
            scheduler,
            model_id=model_id,
            fingerprint=f"fp_llamaserve_{secrets.token_hex(4)}",
            created=created or int(time.time()),
        )
        info = engine.info
        # Chosen and compiled once per model; `chat_template` is the --chat-template override.
        self.template = template_for_engine(
            engine,
            chat_template,
            bos_token=self._special_text(info.bos_token),
            eos_token=self._special_text(info.eos_token),
        )
        self._bos_text = self.template.bos_token
        self.completions = CompletionService(
            engine, scheduler, model_id=model_id, fingerprint=self.fingerprint, created=self.created
        )
        self.completions.limits = self.limits
        self.embeddings = EmbeddingsService.for_engine(engine, model_id=model_id)

    def _special_bytes(self, token: int) -> bytes:
        """A token's bytes with control tokens rendered as their text (``<|im_start|>``)."""
        token_bytes = self.engine.token_bytes
        try:
            return token_bytes(token, special=True)  # type: ignore[call-arg]
        except TypeError:  # an engine without the keyword renders specials anyway
            return token_bytes(token)

    def _special_text(self, token: int | None) -> str:
        return "" if token is None else self._special_bytes(token).decode("utf-8", errors="replace")

    # ---- models -----------------------------------------------------------------------------

    def list_models(self) -> ModelList:
        return ModelList(data=[Model(id=self.model_id, created=self.created)])

    # ---- /tokenize, /detokenize ---------------------------------------------------------------

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        self.check_model(req.model_extra.get("model") if req.model_extra else None)
        tokens = self.engine.tokenize(req.content, add_special=req.add_special, parse_special=req.parse_special)
        if not req.with_pieces:
            return TokenizeResponse(tokens=tokens)
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=self._special_text(t)) for t in tokens])

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        n_vocab = self.engine.info.n_vocab
        bad = [t for t in req.tokens if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequestError(
                f"Token ids outside the vocabulary (0..{n_vocab - 1}): {bad[:5]}.", param="tokens"
            )
        raw = b"".join(self._special_bytes(t) for t in req.tokens)
        return DetokenizeResponse(content=raw.decode("utf-8", errors="replace"))

    # ---- request preparation ----------------------------------------------------------------

    def render_prompt(self, messages: Sequence[ChatMessage], plan: ToolPlan | None = None) -> str:
        plain: list[dict[str, object]] = []
        for i, m in enumerate(messages):
            if isinstance(m.content, list):
                parts = []
                for j, p in enumerate(m.content):
                    if p.type == "text" and p.text is not None:
                        parts.append(p.text)
                    elif p.type == "refusal" and m.role == "assistant" and p.refusal is not None:
                        parts.append(p.refusal)
                    else:
                        raise InvalidRequestError(
                            f"Content parts of type '{p.type}' are not supported: this model reads text only.",
                            param=f"messages[{i}].content[{j}]",
                        )
                content: str | None = "".join(parts)
            else:
                content = m.content
            if m.role == "tool" and not m.tool_call_id:
                raise InvalidRequestError("A 'tool' message needs 'tool_call_id'.", param=f"messages[{i}]")
            entry: dict[str, object] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
            if m.tool_calls:
                entry["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id:
                entry["tool_call_id"] = m.tool_call_id
            plain.append(entry)
        # chat_template.py decodes tool-call arguments, shows the tools, and renders.
        return render_chat(self.template, plain, plan)

    def tokenize_prompt(self, text: str) -> list[int]:
        # A template that writes the BOS text itself must not get a second BOS from the tokenizer.
        has_bos = bool(self._bos_text) and text.startswith(self._bos_text)
        return self.engine.tokenize(text, add_special=not has_bos, parse_special=True)

    def _validate_chat(self, req: ChatCompletionRequest) -> None:
        extra = req.model_extra or {}
        for name, acceptable in UNSUPPORTED_CHAT_FIELDS.items():
            value = extra.get(name)
            if value is not None and not acceptable(value):
                raise UnsupportedFieldError(name)
        self._validate_tools(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        if req.stream_options is not None and not req.stream:
            raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")

    def _validate_tools(self, req: ChatCompletionRequest) -> None:
        self.tool_plan(req)  # raises the 400s

    def tool_plan(self, req: ChatCompletionRequest) -> ToolPlan | None:
        """The request's tools, tool_choice and parallel_tool_calls, checked; None without tools."""
        return plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, self.template.tool_style)

    def grammar_for(self, req: ChatCompletionRequest) -> str | None:
        """The GBNF that ``response_format`` (or our ``grammar`` extension) asks for."""
        fmt = req.response_format
        structured = isinstance(fmt, ResponseFormatJsonObject | ResponseFormatJsonSchema)
        if structured and req.grammar is not None:
            raise InvalidRequestError("Give either 'grammar' or a JSON 'response_format', not both.", param="grammar")
        if isinstance(fmt, ResponseFormatJsonObject):
            return JSON_OBJECT_GBNF
        if isinstance(fmt, ResponseFormatJsonSchema):
            spec = fmt.json_schema
            if spec.schema_ is None:
                return JSON_OBJECT_GBNF
            try:
                return json_schema_to_gbnf(spec.schema_, strict=bool(spec.strict))
            except InvalidSchemaError as exc:
                exc.param = "response_format.json_schema.schema"
                raise
        return req.grammar

    def prepare_chat(self, req: ChatCompletionRequest, request_id: str) -> list[GenerationRequest]:
        self.check_model(req.model)
        check_chat_request(req, self.limits)
        self._validate_chat(req)
        self.log_caller("chat completion", req, request_id)
        grammar = self.grammar_for(req)
        plan = self.tool_plan(req)
        tool_grammar = plan.grammar() if plan is not None else None
        if tool_grammar is not None:
            if grammar is not None:
                raise InvalidRequestError(
                    "A tool_choice that requires a call cannot be combined with 'grammar' or a JSON 'response_format'.",
                    param="tool_choice",
                )
            grammar = tool_grammar
        prompt = self.tokenize_prompt(self.render_prompt(req.messages, plan))
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        budget = self.token_budget(len(prompt), requested, param="messages")
        return self.generation_requests(
            req,
            prompt,
            request_id=request_id,
            max_tokens=budget,
            n=req.n or 1,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            grammar=grammar,
        )

    def apply_template(self, req: ChatCompletionRequest) -> str:
        """``POST /apply-template``: the prompt text ``req`` would generate from, checked like a chat request."""
        self.check_model(req.model)
        self._validate_chat(req)
        return self.render_prompt(req.messages, self.tool_plan(req))

    # ---- tool-calling hooks -----------------------------------------------------------------

    def parse_choice(self, req: ChatCompletionRequest, text: str) -> tuple[str | None, list[ToolCall] | None]:
        """A finished choice's text as (content, tool_calls)."""
        return response_message_parts(self.tool_plan(req), text)

    def choice_streamer(self, req: ChatCompletionRequest) -> ChoiceStreamer | ToolChoiceStreamer:
        plan = self.tool_plan(req)
        return ToolChoiceStreamer(plan) if plan is not None and plan.calls_enabled else ChoiceStreamer()

    # ---- responses --------------------------------------------------------------------------

    def _logprob_entry(self, ev: TokenEvent) -> TokenLogprobEntry:
        tok_text, tok_bytes = self.token_text(ev.token)
        tops = []
        for alt in ev.top_logprobs:
            alt_text, alt_bytes = self.token_text(alt.token)
            tops.append(TopLogprob(token=alt_text, logprob=alt.logprob, bytes=alt_bytes))
        return TokenLogprobEntry(token=tok_text, logprob=ev.logprob or 0.0, bytes=tok_bytes, top_logprobs=tops)

    def _chat_usage(self, finishes: Sequence[FinishEvent]) -> Usage:
        # The n choices share one prompt: OpenAI counts it once. The choice that computed it
        # reports the real cache hits; the others reused its cells, so the least is the truth.
        return self.usage(
            finishes[0].prompt_tokens if finishes else 0,
            sum(f.completion_tokens for f in finishes),
            min((f.cached_tokens for f in finishes), default=0),
        )

    async def complete_chat(
        self, req: ChatCompletionRequest, handles: Sequence[RequestHandle], request_id: str
    ) -> ChatCompletion:
        choices = [_Choice() for _ in handles]
        async for i, ev in self.merged_events(handles):
            if isinstance(ev, TokenEvent):
                choices[i].text.append(ev.text)
                if req.logprobs:
                    choices[i].logprobs.append(self._logprob_entry(ev))
            else:
                choices[i].text.append(ev.text)
                choices[i].finish = ev
        finishes = [c.finish for c in choices if c.finish is not None]
        out: list[ChatChoice] = []
        for i, c in enumerate(choices):
            content, tool_calls = self.parse_choice(req, "".join(c.text))
            reason = "tool_calls" if tool_calls else self.finish_reason(c.finish.reason) if c.finish else "stop"
            out.append(
                ChatChoice(
                    index=i,
                    message=ResponseMessage(content=content, tool_calls=tool_calls),
                    logprobs=ChoiceLogprobs(content=c.logprobs) if req.logprobs else None,
                    finish_reason=reason,  # type: ignore[arg-type]
                )
            )
        return ChatCompletion(
            id=request_id,
            created=self.now(),
            model=self.model_id,
            system_fingerprint=self.fingerprint,
            choices=out,
            usage=self._chat_usage(finishes),
        )

    async def stream_chat(
        self, req: ChatCompletionRequest, handles: Sequence[RequestHandle], request_id: str
    ) -> AsyncIterator[dict[str, object]]:
        """Yield chunk dicts ready for JSON; errors after the start are raised to the route."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        created = self.now()

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> dict[str, object]:
            c = self.wire_chunk(ChatCompletionChunk, request_id, created, choices, usage, include_usage=include_usage)
            for ch, choice in zip(cast("list[dict[str, object]]", c["choices"]), choices, strict=True):
                # Absent fields are left out at every depth, tool-call deltas included, as OpenAI does.
                ch["delta"] = choice.delta.model_dump(exclude_none=True)
            return c

        streamers = [self.choice_streamer(req) for _ in handles]
        for i in range(len(handles)):
            yield chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))])
        finishes: list[FinishEvent] = []
        async for i, ev in self.merged_events(handles):
            if isinstance(ev, TokenEvent):
                deltas = streamers[i].push(ev.text)
                if req.logprobs:
                    lp = ChoiceLogprobs(content=[self._logprob_entry(ev)])
                    first = deltas.pop(0) if deltas else ChunkDelta(content="")
                    yield chunk([ChunkChoice(index=i, delta=first, logprobs=lp)])
                for d in deltas:
                    yield chunk([ChunkChoice(index=i, delta=d)])
                continue
            finishes.append(ev)
            deltas, made_calls = streamers[i].finish(ev.text)
            for d in deltas:
                yield chunk([ChunkChoice(index=i, delta=d)])
            reason = "tool_calls" if made_calls else self.finish_reason(ev.reason)
            yield chunk([ChunkChoice(index=i, delta=ChunkDelta(), finish_reason=reason)])  # type: ignore[arg-type]
        if include_usage:
            yield chunk([], self._chat_usage(finishes))
