"""The output side of ``/v1/messages``: content blocks, ``stop_reason``, usage, and the named stream events.

A stream is one state machine over the chat choice streamer's deltas
(:mod:`server.services.tool_stream`, which already knows when text is a tool call and streams
calls' arguments as they are written)::

    message_start, ping
    per block: content_block_start -> content_block_delta* -> content_block_stop
        text -> text_delta;  a tool call -> a tool_use block, its arguments as input_json_delta
    message_delta (stop_reason, stop_sequence, the cumulative usage), message_stop

Blocks never interleave: a new one closes the open one. ``message_start`` goes out at once, before
the prefix cache is known, so it counts the whole prompt as ``input_tokens``; ``message_delta``
carries the final split (the SDK overwrites its counts with it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from server.engine.base import FinishReason
from server.prompting.tool_parse import ParsedCall
from server.prompting.tools import ToolPlan, new_call_id
from server.protocol import ChunkDelta, Usage
from server.protocol.anthropic import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJsonDelta,
    Message,
    MessageDeltaBody,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    MessageUsage,
    PingEvent,
    StopReason,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from server.runtime.events import FinishEvent, TokenEvent
from server.runtime.scheduler import RequestHandle
from server.services.encoded_chunks import TextChunks
from server.services.pipeline import Chunk, Pipeline, PreparedGeneration, StreamItem, Submitted
from server.services.tool_stream import ChoiceStreamer, choice_streamer


@dataclass(frozen=True)
class PreparedMessages:
    generation: PreparedGeneration
    plan: ToolPlan | None
    stream: bool


def tool_use_id(call_id: str | None = None) -> str:
    """Anthropic's ``toolu_`` spelling of a call id (a new one when none is given)."""
    return "toolu_" + (call_id or new_call_id()).removeprefix("call_")


def stop_reason(finish: FinishEvent | None, *, made_calls: bool) -> tuple[StopReason, str | None]:
    """``stop_reason`` and ``stop_sequence`` of a finished reply (none at all: max_tokens was 0)."""
    if made_calls:
        return "tool_use", None
    if finish is None or finish.reason is not FinishReason.STOP:
        return "max_tokens", None
    if finish.stop_sequence is not None:
        return "stop_sequence", finish.stop_sequence
    return "end_turn", None


def message_usage(usage: Usage) -> MessageUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return MessageUsage(
        input_tokens=usage.prompt_tokens - cached,
        output_tokens=usage.completion_tokens,
        cache_read_input_tokens=cached,
    )


def content_blocks(text: str, calls: Sequence[ParsedCall] | None) -> list[ContentBlock]:
    if calls:
        return [ToolUseBlock(id=tool_use_id(), name=c.name, input=dict(c.arguments)) for c in calls]
    return [TextBlock(text=text)] if text else []


class MessagesGeneration(Submitted[PreparedMessages]):
    """One submitted Messages request: :meth:`response` for JSON, or :meth:`chunks` for the named events."""

    async def response(self) -> Message:
        p, pipe = self.prepared, self._pipeline
        parts: list[str] = []
        finish: FinishEvent | None = None
        async for _, ev in pipe.events(p.generation, self._handles):
            parts.append(ev.text)
            if isinstance(ev, FinishEvent):
                finish = ev
        text = "".join(parts)
        calls = p.plan.parse(text) if p.plan is not None else None
        reason, sequence = stop_reason(finish, made_calls=bool(calls))
        return Message(
            id=p.generation.request_id,
            model=pipe.model_id,
            content=content_blocks(text, calls),
            stop_reason=reason,
            stop_sequence=sequence,
            usage=message_usage(pipe.usage(p.generation, [finish])),
        )

    def chunks(self) -> AsyncIterator[StreamItem]:
        return message_events(self._pipeline, self.prepared.generation, self.prepared.plan, self._handles)


class _Blocks:
    """Chat deltas -> content block events, one block open at a time, indexed as in the final content."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self._text = TextChunks(
            lambda i, text: ContentBlockDeltaEvent(index=i, delta=TextDelta(text=text)).model_dump(),
            event="content_block_delta",
        )

    def _start(self, block: ContentBlock) -> list[Chunk]:
        out = self.close()
        self.index += 1
        self.open = block.type
        return [*out, ContentBlockStartEvent(index=self.index, content_block=block).model_dump()]

    def _delta(self, delta: TextDelta | InputJsonDelta) -> Chunk:
        return ContentBlockDeltaEvent(index=self.index, delta=delta).model_dump()

    def text(self, content: str) -> list[StreamItem]:
        """A text delta, in the open text block or a new one."""
        out: list[StreamItem] = []
        if self.open != "text":
            out += self._start(TextBlock(text=""))
        out.append(self._text.encode(self.index, content))
        return out

    def feed(self, delta: ChunkDelta) -> list[StreamItem]:
        out: list[StreamItem] = self.text(delta.content) if delta.content else []
        for call in delta.tool_calls or []:
            fn = call.function
            if call.id is not None:  # a new call: its id and name come first
                out += self._start(ToolUseBlock(id=tool_use_id(call.id), name=(fn and fn.name) or "", input={}))
            if fn is not None and fn.arguments:
                out.append(self._delta(InputJsonDelta(partial_json=fn.arguments)))
        return out

    def close(self) -> list[Chunk]:
        if self.open is None:
            return []
        self.open = None
        return [ContentBlockStopEvent(index=self.index).model_dump()]


async def message_events(
    pipeline: Pipeline, generation: PreparedGeneration, plan: ToolPlan | None, handles: Sequence[RequestHandle]
) -> AsyncIterator[StreamItem]:
    """The named events of one streamed reply; errors after the start are raised to the route."""
    start = Message(
        id=generation.request_id,
        model=pipeline.model_id,
        content=[],
        stop_reason=None,
        stop_sequence=None,
        usage=MessageUsage(input_tokens=sum(len(p) for p in generation.prompts), output_tokens=0),
    )
    yield MessageStartEvent(message=start).model_dump()
    yield PingEvent().model_dump()
    streamer = choice_streamer(plan)
    blocks = _Blocks()
    finish: FinishEvent | None = None
    made_calls = False
    plain = isinstance(streamer, ChoiceStreamer)  # no tool calls to parse: a token's text is its delta
    async for _, ev in pipeline.events(generation, handles):
        if isinstance(ev, TokenEvent) and plain:
            if ev.text:
                for event in blocks.text(ev.text):
                    yield event
            continue
        if isinstance(ev, TokenEvent):
            deltas = streamer.push(ev.text)
        else:
            finish = ev
            deltas, made_calls = streamer.finish(ev.text)
        for d in deltas:
            for event in blocks.feed(d):
                yield event
    for event in blocks.close():
        yield event
    reason, sequence = stop_reason(finish, made_calls=made_calls)
    yield MessageDeltaEvent(
        delta=MessageDeltaBody(stop_reason=reason, stop_sequence=sequence),
        usage=message_usage(pipeline.usage(generation, [finish])),
    ).model_dump()
    yield MessageStopEvent().model_dump()
