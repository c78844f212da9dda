"""``/v1/chat/completions``: a chat request -> prompt tokens -> the pipeline -> a response or chunks.

:meth:`ChatService.start` takes the request once: it checks and prepares it in a worker
thread (limits, tools, the grammar, the template, tokenizing), submits every choice, and
returns a :class:`ChatGeneration` that the route turns into JSON or SSE. The tool plan is
built once per request and travels with the prepared request to the output side.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from server.engine.base import Engine
from server.errors import InvalidRequestError
from server.prompting.chat_template import ChatTemplate, render_chat, select_template
from server.prompting.grammar import JSON_OBJECT_GBNF
from server.prompting.named import NamedTemplates
from server.prompting.tools import ToolPlan, plan_tools, response_message_parts
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
    CompletionTokensDetails,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseMessage,
    TokenLogprobEntry,
    TopLogprob,
    Usage,
)
from server.runtime.events import FinishEvent, PrefillEvent, QueuedEvent, TokenEvent
from server.services.encoded_chunks import TextChunks
from server.services.limits import check_chat_request, refuse_unsupported
from server.services.pipeline import (
    ANONYMOUS,
    Caller,
    ChoiceText,
    Chunk,
    Pipeline,
    PreparedGeneration,
    StreamItem,
    Submitted,
    progress_comment,
    wants_progress,
)
from server.services.reasoning import (
    ReasoningSplitter,
    opens_thinking,
    reasoning_deltas,
    split_all,
    template_variables,
)
from server.services.sampling import request_grammar, schema_grammar
from server.services.tool_stream import ChoiceStreamer, ToolChoiceStreamer, choice_streamer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedChat:
    generation: PreparedGeneration
    plan: ToolPlan | None
    logprobs: bool
    stream: bool
    include_usage: bool
    # None: the reply is all content; else whether it starts inside a <think> block (services/reasoning.py)
    thinking: bool | None = None

    def splitter(self) -> ReasoningSplitter | None:
        return None if self.thinking is None else ReasoningSplitter(open_at_start=self.thinking)


@dataclass
class _Choice(ChoiceText):
    logprobs: list[TokenLogprobEntry] = field(default_factory=list)


def special_text(engine: Engine, token: int | None) -> str:
    """A token's text with control tokens spelled out (``<|im_start|>``), as templates write them."""
    return "" if token is None else engine.token_bytes(token, special=True).decode("utf-8", errors="replace")


def template_for(engine: Engine, override: str | None = None, named: NamedTemplates | None = None) -> ChatTemplate:
    """The template of the engine's model (compiled once: keep it for the model's lifetime)."""
    info = engine.info

    def has_special_token(text: str) -> bool:
        return len(engine.tokenize(text, add_special=False, parse_special=True)) == 1

    template = select_template(
        info.chat_template,
        override=override,
        has_special_token=has_special_token,
        bos_token=special_text(engine, info.bos_token),
        eos_token=special_text(engine, info.eos_token),
        named=named,
    )
    log.info("chat template: %s (tools: %s format)", template.name, template.tool_style)
    return template


def grammar_for(req: ChatCompletionRequest) -> tuple[str | None, str | None]:
    """The GBNF that ``response_format`` (or our ``grammar``/``json_schema`` extensions) asks for, and
    that field's name."""
    fmt = req.response_format
    structured = isinstance(fmt, ResponseFormatJsonObject | ResponseFormatJsonSchema)
    for own in ("grammar", "json_schema"):
        if structured and getattr(req, own) is not None:
            raise InvalidRequestError(f"Give either '{own}' or a JSON 'response_format', not both.", param=own)
    if isinstance(fmt, ResponseFormatJsonObject):
        if fmt.schema_ is None:
            return JSON_OBJECT_GBNF, "response_format"
        return schema_grammar(fmt.schema_, strict=False, param="response_format.schema"), "response_format.schema"
    if isinstance(fmt, ResponseFormatJsonSchema):
        spec = fmt.json_schema
        if spec.schema_ is None:
            return JSON_OBJECT_GBNF, "response_format"
        param = "response_format.json_schema.schema"
        return schema_grammar(spec.schema_, strict=bool(spec.strict), param=param), param
    return request_grammar(req)


def prompt_ending(req: ChatCompletionRequest) -> tuple[bool, bool]:
    """``(add_generation_prompt, continue_final)`` as vLLM defines the two fields, with llama-server's
    default: a final assistant message (not a tool call) is a prefill, continued rather than answered."""
    if req.continue_final_message and req.add_generation_prompt:
        raise InvalidRequestError(
            "'continue_final_message' and 'add_generation_prompt' cannot both be true: a prompt either leaves "
            "the final message open or starts a new assistant turn.",
            param="continue_final_message",
        )
    last = req.messages[-1]
    if req.continue_final_message and last.tool_calls:
        raise InvalidRequestError("A final tool-call message cannot be continued.", param="continue_final_message")
    prefill = last.role == "assistant" and not last.tool_calls and req.add_generation_prompt is not True
    continue_final = prefill if req.continue_final_message is None else req.continue_final_message
    add = (not continue_final) if req.add_generation_prompt is None else req.add_generation_prompt
    return add, continue_final


class ChatService:
    def __init__(self, pipeline: Pipeline, template: ChatTemplate, *, split_reasoning: bool = False) -> None:
        self.pipeline = pipeline
        self.template = template
        self.split_reasoning = split_reasoning  # --reasoning-format deepseek

    # ---- preparing --------------------------------------------------------------------------

    def _checked_plan(self, req: ChatCompletionRequest) -> ToolPlan | None:
        """Every check a chat request gets before rendering; returns its tool plan (built once)."""
        check_chat_request(req, self.pipeline.limits)
        refuse_unsupported(req.model_extra or {}, UNSUPPORTED_CHAT_FIELDS)
        return plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, self.template.tool_style)

    def prepare(self, req: ChatCompletionRequest, request_id: str, caller: Caller = ANONYMOUS) -> PreparedChat:
        """Check, render and tokenize (blocking: the service calls it in a worker thread)."""
        plan = self._checked_plan(req)
        self.pipeline.log_caller("chat completion", req, request_id)
        grammar, grammar_param = grammar_for(req)
        tool_grammar = plan.grammar() if plan is not None else None
        if tool_grammar is not None:
            if grammar is not None:
                raise InvalidRequestError(
                    "A tool_choice that requires a call cannot be combined with 'grammar' or a JSON 'response_format'.",
                    param="tool_choice",
                )
            grammar, grammar_param = tool_grammar, "tools"
        text = self.render_request(req, plan)
        prompt = self.tokenize_prompt(text)
        generation = self.pipeline.prepare(
            req,
            [prompt],
            request_id=request_id,
            max_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
            prompt_param="messages",
            n=req.n or 1,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            grammar=grammar,
            grammar_param=grammar_param,
            caller=caller,
            progress=wants_progress(req),
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # A grammar writes the reply's shape itself: nothing in it is thinking.
        thinking = opens_thinking(text) if self.split_reasoning and grammar is None else None
        return PreparedChat(generation, plan, bool(req.logprobs), bool(req.stream), include_usage, thinking)

    def render_request(self, req: ChatCompletionRequest, plan: ToolPlan | None) -> str:
        add_generation_prompt, continue_final = prompt_ending(req)
        return self.render_prompt(
            req.messages,
            plan,
            add_generation_prompt=add_generation_prompt,
            continue_final=continue_final,
            variables=template_variables(req, self.template),
        )

    def render_prompt(
        self,
        messages: Sequence[ChatMessage],
        plan: ToolPlan | None = None,
        *,
        add_generation_prompt: bool = True,
        continue_final: bool = False,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        plain: list[dict[str, object]] = []
        for i, m in enumerate(messages):
            if m.role == "tool" and not m.tool_call_id:
                raise InvalidRequestError("A 'tool' message needs 'tool_call_id'.", param=f"messages[{i}]")
            entry: dict[str, object] = {"role": "system" if m.role == "developer" else m.role}
            entry["content"] = _message_text(m, i)
            if m.tool_calls:
                entry["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id:
                entry["tool_call_id"] = m.tool_call_id
            if m.reasoning_content:
                entry["reasoning_content"] = m.reasoning_content  # for templates that show earlier thinking
            plain.append(entry)
        # chat_template.py decodes tool-call arguments, shows the tools, and renders.
        return render_chat(
            self.template,
            plain,
            plan,
            add_generation_prompt=add_generation_prompt,
            continue_final=continue_final,
            variables=variables,
        )

    def tokenize_prompt(self, text: str) -> list[int]:
        # A template that writes the BOS text itself must not get a second BOS from the tokenizer.
        bos = self.template.bos_token
        has_bos = bool(bos) and text.startswith(bos)
        return self.pipeline.engine.tokenize(text, add_special=not has_bos, parse_special=True)

    def apply_template(self, req: ChatCompletionRequest) -> str:
        """``POST /apply-template``: the prompt text ``req`` would generate from, checked like a chat request."""
        return self.render_request(req, self._checked_plan(req))

    # ---- running ----------------------------------------------------------------------------

    async def start(self, req: ChatCompletionRequest, request_id: str, caller: Caller = ANONYMOUS) -> ChatGeneration:
        """Prepare (off the event loop) and submit; every refusal is raised before any output."""
        prepared = await self.pipeline.off_loop(lambda: self.prepare(req, request_id, caller))
        return ChatGeneration(self.pipeline, prepared, self.pipeline.submit(prepared.generation))


def _message_text(m: ChatMessage, i: int) -> str:
    if not isinstance(m.content, list):
        return m.content or ""
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
    return "".join(parts)


class ChatGeneration(Submitted[PreparedChat]):
    """One submitted chat request: :meth:`response` for JSON, or :meth:`chunks` for SSE."""

    def _logprob_entry(self, ev: TokenEvent) -> TokenLogprobEntry:
        tok_text, tok_bytes = self._pipeline.token_text(ev.token)
        tops = []
        for alt in ev.top_logprobs:
            alt_text, alt_bytes = self._pipeline.token_text(alt.token)
            tops.append(TopLogprob(token=alt_text, logprob=alt.logprob, bytes=alt_bytes))
        return TokenLogprobEntry(token=tok_text, logprob=ev.logprob or 0.0, bytes=tok_bytes, top_logprobs=tops)

    async def response(self) -> ChatCompletion:
        p, pipe = self.prepared, self._pipeline
        choices = [_Choice() for _ in range(p.generation.n_choices)]
        async for i, ev in pipe.events(p.generation, self._handles):
            choices[i].parts.append(ev.text)
            if isinstance(ev, FinishEvent):
                choices[i].finish = ev
            elif p.logprobs:
                choices[i].logprobs.append(self._logprob_entry(ev))
        out: list[ChatChoice] = []
        reasoning_tokens = 0
        for i, c in enumerate(choices):
            splitter = p.splitter()
            reasoning, text = split_all(splitter, c.parts) if splitter is not None else (None, c.text)
            reasoning_tokens += splitter.reasoning_tokens if splitter is not None else 0
            content, tool_calls = response_message_parts(p.plan, text)
            reason = pipe.finish_reason(c.finish.reason if c.finish else None)
            out.append(
                ChatChoice(
                    index=i,
                    message=ResponseMessage(content=content, tool_calls=tool_calls, reasoning_content=reasoning),
                    logprobs=ChoiceLogprobs(content=c.logprobs) if p.logprobs else None,
                    finish_reason="tool_calls" if tool_calls else reason,
                )
            )
        return ChatCompletion(
            id=p.generation.request_id,
            created=pipe.now(),
            model=pipe.model_id,
            system_fingerprint=pipe.fingerprint,
            choices=out,
            usage=with_reasoning_tokens(pipe.usage(p.generation, [c.finish for c in choices]), reasoning_tokens),
        )

    def _chunk(self, created: int, choices: list[ChunkChoice], usage: Usage | None = None) -> Chunk:
        p = self.prepared
        c = self._pipeline.wire_chunk(
            ChatCompletionChunk, p.generation.request_id, created, choices, usage, include_usage=p.include_usage
        )
        for ch, choice in zip(cast("list[dict[str, object]]", c["choices"]), choices, strict=True):
            # Absent fields are left out at every depth, tool-call deltas included, as OpenAI does.
            ch["delta"] = choice.delta.model_dump(exclude_none=True)
        return c

    async def chunks(self) -> AsyncIterator[StreamItem]:
        """Chunk dicts ready for JSON; errors after the start are raised to the route."""
        p, created = self.prepared, self._pipeline.now()
        n = p.generation.n_choices
        streamers = [choice_streamer(p.plan) for _ in range(n)]
        splitters = [p.splitter() for _ in range(n)]
        # Text that needs no tool-call parsing and no log-probabilities takes the fast path.
        plain = [isinstance(s, ChoiceStreamer) and not p.logprobs for s in streamers]
        for i in range(n):
            yield self._chunk(created, [ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))])
        finishes: list[FinishEvent | None] = [None] * n
        text_chunks = TextChunks(
            lambda i, text: self._chunk(created, [ChunkChoice(index=i, delta=ChunkDelta(content=text))])
        )
        async for i, ev in self._pipeline.stream_events(p.generation, self._handles):
            if isinstance(ev, QueuedEvent | PrefillEvent):
                yield progress_comment(i, ev)
                continue
            splitter = splitters[i]
            if isinstance(ev, TokenEvent):
                if plain[i] and (splitter is None or splitter.passes_through):
                    # Most tokens of most streams: the text is the content delta, as the slow path makes it.
                    if ev.text:
                        yield text_chunks.encode(i, ev.text)
                    continue
                deltas = _split_push(splitter, streamers[i], ev.text)
                if p.logprobs:
                    lp = ChoiceLogprobs(content=[self._logprob_entry(ev)])
                    first = deltas.pop(0) if deltas else ChunkDelta(content="")
                    yield self._chunk(created, [ChunkChoice(index=i, delta=first, logprobs=lp)])
                for d in deltas:
                    if _text_only(d):
                        yield text_chunks.encode(i, cast("str", d.content))
                    else:
                        yield self._chunk(created, [ChunkChoice(index=i, delta=d)])
                continue
            finishes[i] = ev
            deltas, made_calls = _split_finish(splitter, streamers[i], ev.text)
            for d in deltas:
                yield self._chunk(created, [ChunkChoice(index=i, delta=d)])
            reason = "tool_calls" if made_calls else self._pipeline.finish_reason(ev.reason)
            yield self._chunk(created, [ChunkChoice(index=i, delta=ChunkDelta(), finish_reason=reason)])
        if p.include_usage:
            thought = sum(s.reasoning_tokens for s in splitters if s is not None)
            yield self._chunk(created, [], with_reasoning_tokens(self._pipeline.usage(p.generation, finishes), thought))


Streamer = ChoiceStreamer | ToolChoiceStreamer


def _text_only(d: ChunkDelta) -> bool:
    # Any other field given (a new one too) takes the slow path, which knows how to write it.
    return d.content is not None and d.model_fields_set == {"content"}


def _split_push(splitter: ReasoningSplitter | None, streamer: Streamer, text: str) -> list[ChunkDelta]:
    """One token's deltas: its thinking as reasoning_content, the rest through the content streamer."""
    if splitter is None:
        return streamer.push(text)
    deltas, content = reasoning_deltas(splitter.push(text))
    return deltas + (streamer.push(content) if content else [])


def _split_finish(splitter: ReasoningSplitter | None, streamer: Streamer, text: str) -> tuple[list[ChunkDelta], bool]:
    if splitter is None:
        return streamer.finish(text)
    deltas, content = reasoning_deltas(splitter.push(text) + splitter.finish())
    rest, made_calls = streamer.finish(content)
    return deltas + rest, made_calls


def with_reasoning_tokens(usage: Usage, reasoning_tokens: int) -> Usage:
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
    return usage
