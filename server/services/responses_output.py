"""The output side of ``/v1/responses``: output items, the Response object, and the stream events.

One state machine (:class:`_Writer`) turns a reply into items and events, for a stream and a JSON
response alike, so both hold the same items (the same ids, the same ``call_id``). It reads the chat
choice streamer's deltas (:mod:`server.services.tool_stream`: text, or tool calls with their
arguments as they are written) after the ``<think>`` split (:mod:`server.services.reasoning`)::

    response.created, response.in_progress
    per item (one open at a time; a new one closes the open one):
        reasoning      output_item.added, reasoning_text.delta*, reasoning_text.done, output_item.done
        message        output_item.added, content_part.added, output_text.delta*, output_text.done,
                       content_part.done, output_item.done
        function_call  output_item.added, function_call_arguments.delta*, function_call_arguments.done,
                       output_item.done
    response.completed | response.incomplete (max_output_tokens) | error, response.failed

Every event carries ``sequence_number``, from 0 up by one. The finished Response is handed to
``on_done`` (the store) before the terminal event goes out, so a client that chains on it at once
finds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.engine.base import FinishReason
from server.errors import LlamaserveError
from server.prompting.tools import ToolPlan
from server.protocol import ChunkDelta, Usage
from server.protocol.responses import (
    IncompleteDetails,
    InputTokensDetails,
    OutputTokensDetails,
    Response,
    ResponseError,
    ResponseUsage,
)
from server.runtime.events import FinishEvent, TokenEvent
from server.services.pipeline import Chunk, PreparedGeneration, Submitted
from server.services.reasoning import Piece, ReasoningSplitter
from server.services.responses_input import new_id
from server.services.tool_stream import choice_streamer

OnDone = Callable[[Response], Awaitable[None]]


@dataclass(frozen=True)
class PreparedResponse:
    generation: PreparedGeneration
    plan: ToolPlan | None
    stream: bool
    response: Response  # the echoed request, status in_progress, no output yet
    on_done: OnDone
    logprobs: bool = False  # include: message.output_text.logprobs
    thinking: bool | None = None  # None: all content; else whether the reply starts inside <think>
    dropped: int = 0  # the oldest input items truncation "auto" left out

    def splitter(self) -> ReasoningSplitter | None:
        return None if self.thinking is None else ReasoningSplitter(open_at_start=self.thinking)


def response_usage(usage: Usage, reasoning_tokens: int) -> ResponseUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
        total_tokens=usage.total_tokens,
    )


def _output_text(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


class _Writer:
    """Items and their events; ``output`` is the Response's output, open item included."""

    def __init__(self) -> None:
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._text: list[str] = []
        self._logprobs: list[dict[str, Any]] = []  # the open message's, as sent
        self._pending: list[dict[str, Any]] = []  # tokens' logprobs not yet sent with a delta

    def event(self, kind: str, **fields: Any) -> Chunk:
        out: Chunk = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return out

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.output) - 1}

    def _start(self, item: dict[str, Any]) -> list[Chunk]:
        out = self.close("completed")
        self._open, self._text, self._logprobs = item, [], []
        self.output.append(item)
        return [*out, self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def logprob(self, entry: dict[str, Any]) -> None:
        self._pending.append(entry)

    def reasoning(self, text: str) -> list[Chunk]:
        self._pending = []  # a thinking token's logprobs belong to no output_text
        out: list[Chunk] = []
        if self._open is None or self._open["type"] != "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            out += self._start(item | {"encrypted_content": None})
        self._text.append(text)
        return [*out, self.event("response.reasoning_text.delta", **self._where(), content_index=0, delta=text)]

    def content(self, text: str) -> list[Chunk]:
        out: list[Chunk] = []
        if self._open is None or self._open["type"] != "message":
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            out += self._start(item)
            part = _output_text("", [])
            out.append(self.event("response.content_part.added", **self._where(), content_index=0, part=part))
        logprobs, self._pending = self._pending, []
        self._text.append(text)
        self._logprobs += logprobs
        where = self._where()
        return [*out, self.event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=logprobs)]

    def call(self, call_id: str, name: str) -> list[Chunk]:
        self._pending = []
        item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "arguments": ""}
        return self._start(item | {"call_id": call_id, "name": name})

    def arguments(self, fragment: str) -> list[Chunk]:
        self._text.append(fragment)
        return [self.event("response.function_call_arguments.delta", **self._where(), delta=fragment)]

    def feed(self, delta: ChunkDelta) -> list[Chunk]:
        out: list[Chunk] = []
        if delta.content:
            out += self.content(delta.content)
        for call in delta.tool_calls or []:
            fn = call.function
            if call.id is not None:  # a new call: its id and name come first
                out += self.call(call.id, (fn and fn.name) or "")
            if fn is not None and fn.arguments:
                out += self.arguments(fn.arguments)
        return out

    def close(self, status: str) -> list[Chunk]:
        """Finish the open item (``incomplete`` when generation was cut short)."""
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(self._text)
        where = {"item_id": item["id"], "output_index": len(self.output) - 1}
        out: list[Chunk] = []
        if item["type"] == "message":
            self._logprobs += self._pending
            part = _output_text(text, self._logprobs)
            done = {"text": text, "logprobs": self._logprobs}
            out.append(self.event("response.output_text.done", **where, content_index=0, **done))
            out.append(self.event("response.content_part.done", **where, content_index=0, part=part))
            item["content"] = [part]
        elif item["type"] == "reasoning":
            out.append(self.event("response.reasoning_text.done", **where, content_index=0, text=text))
            item["content"] = [{"type": "reasoning_text", "text": text}]
        else:
            out.append(self.event("response.function_call_arguments.done", **where, name=item["name"], arguments=text))
            item["arguments"] = text
        item["status"] = status
        self._pending = []
        return [*out, self.event("response.output_item.done", output_index=where["output_index"], item=dict(item))]


def _split(splitter: ReasoningSplitter | None, text: str, *, last: bool) -> list[Piece]:
    """One token's text as thinking and content pieces, in order (all content without a splitter)."""
    if splitter is None:
        return [("content", text)] if text else []
    return splitter.push(text) + (splitter.finish() if last else [])


class ResponsesGeneration(Submitted[PreparedResponse]):
    """One submitted create: :meth:`response` for JSON, or :meth:`chunks` for the stream events."""

    final: Response | None = None  # set once generation ends, before the terminal event

    async def response(self) -> Response:
        async for _ in self._events(raise_errors=True):
            pass  # the same items and events as a stream, unsent
        assert self.final is not None
        return self.final

    def chunks(self) -> AsyncIterator[Chunk]:
        return self._events(raise_errors=False)

    def _logprob_entry(self, ev: TokenEvent) -> dict[str, Any]:
        text, raw = self._pipeline.token_text(ev.token)
        tops = []
        for alt in ev.top_logprobs:
            alt_text, alt_bytes = self._pipeline.token_text(alt.token)
            tops.append({"token": alt_text, "logprob": alt.logprob, "bytes": alt_bytes})
        return {"token": text, "logprob": ev.logprob or 0.0, "bytes": raw, "top_logprobs": tops}

    async def _events(self, *, raise_errors: bool) -> AsyncIterator[Chunk]:
        p, pipe = self.prepared, self._pipeline
        w = _Writer()
        start = p.response.model_dump()
        yield w.event("response.created", response=start)
        yield w.event("response.in_progress", response=start)
        streamer, splitter = choice_streamer(p.plan), p.splitter()
        finish: FinishEvent | None = None
        made_calls = False
        try:
            async for _, ev in pipe.events(p.generation, self._handles):
                if isinstance(ev, TokenEvent) and p.logprobs:
                    w.logprob(self._logprob_entry(ev))
                last = isinstance(ev, FinishEvent)
                pieces = _split(splitter, ev.text, last=last)
                for kind, text in pieces:
                    if kind == "reasoning":
                        for chunk in w.reasoning(text):
                            yield chunk
                content = "".join(text for kind, text in pieces if kind == "content")
                if isinstance(ev, FinishEvent):
                    finish = ev
                    deltas, made_calls = streamer.finish(content)
                else:
                    deltas = streamer.push(content) if content else []
                for d in deltas:
                    for chunk in w.feed(d):
                        yield chunk
        except LlamaserveError as exc:
            if raise_errors:
                raise
            for chunk in self._failed(w, exc):
                yield chunk
            return
        cut = not made_calls and (finish is None or finish.reason is not FinishReason.STOP)
        for chunk in w.close("incomplete" if cut else "completed"):
            yield chunk
        thought = splitter.reasoning_tokens if splitter is not None else 0
        self.final = final = p.response.model_copy(
            update={
                "status": "incomplete" if cut else "completed",
                "completed_at": None if cut else pipe.now(),
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
                "output": w.output,
                "usage": response_usage(pipe.usage(p.generation, [finish]), thought),
            }
        )
        await p.on_done(final)
        yield w.event("response.incomplete" if cut else "response.completed", response=final.model_dump())

    def _failed(self, w: _Writer, exc: LlamaserveError) -> Sequence[Chunk]:
        """An error after the stream began: OpenAI's ``error`` event, then ``response.failed``."""
        error = w.event("error", code=exc.code, message=exc.message, param=exc.param)
        failed = self.prepared.response.model_copy(
            update={
                "status": "failed",
                "output": w.output,
                "error": ResponseError(code="server_error", message=exc.message),
            }
        )
        return [*w.close("incomplete"), error, w.event("response.failed", response=failed.model_dump())]
