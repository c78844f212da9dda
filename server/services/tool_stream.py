"""Streaming a chat choice: text pieces in, OpenAI chunk deltas out, tool calls included.

:class:`ChoiceStreamer` passes plain text straight through. :class:`ToolChoiceStreamer` is
used when the request's tools may be called: a grammar-forced call streams as OpenAI's do (id
and name first, then argument fragments as they are generated); otherwise
:class:`ToolCallStream` holds back text that may turn into a call and releases it as content
the moment it cannot. Both send the arguments exactly as the model wrote them, so a stream
reassembles into the same call the non-streamed response holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from server.prompting.tool_parse import ParsedCall
from server.prompting.tools import ToolPlan, new_call_id, to_tool_calls
from server.protocol import ChunkDelta, ToolCall, ToolCallDelta, ToolCallFunctionDelta

# Argument text goes out in fragments of this many characters, as OpenAI streams it.
ARGUMENT_FRAGMENT = 8
# What a tool call may start with; anything else is content from its first character.
_CALL_STARTS = ("{", "[", "```", "<tool_call>", "<function=", "<|python_tag|>", "[TOOL_CALLS]")


class ChoiceStreamer:
    """Plain text: each piece is one content delta (nothing is held back)."""

    def push(self, text: str) -> list[ChunkDelta]:
        return [ChunkDelta(content=text)] if text else []

    def finish(self, text: str) -> tuple[list[ChunkDelta], bool]:
        """The last text; returns the deltas and whether the choice made tool calls."""
        return self.push(text), False


def choice_streamer(plan: ToolPlan | None) -> ChoiceStreamer | ToolChoiceStreamer:
    return ToolChoiceStreamer(plan) if plan is not None and plan.calls_enabled else ChoiceStreamer()


def _may_become_call(text: str) -> bool:
    return any(text.startswith(s) or s.startswith(text) for s in _CALL_STARTS)


class ToolCallStream:
    """Per choice: passes content through, holding back text that may still become a call.

    Text is held only while the output so far (leading whitespace aside) is a possible start
    of a call; the first character that rules a call out releases everything as content.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._held = ""
        self._holding = plan.calls_enabled

    def push(self, text: str) -> str:
        """Feed generated text; return the content to send now."""
        if not self._holding:
            return text
        self._held += text
        stripped = self._held.lstrip()
        if not stripped or _may_become_call(stripped):
            return ""
        self._holding = False
        out, self._held = self._held, ""
        return out

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """End of generation: (content still to send, calls)."""
        held, self._held = self._held, ""
        if not self._holding:
            return held, []
        calls = self._plan.parse(held)
        return ("", calls) if calls else (held, [])


# How a grammar-forced call begins, up to its arguments object.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]{1,64})"\s*,\s*"(?:parameters|arguments)"\s*:\s*')


class _ObjectEnd:
    """Finds, incrementally, where the JSON object starting at a given index closes."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, text: str, start: int) -> int | None:
        """Scan ``text[start:]``; the index just past the closing brace, or None if not there yet."""
        for i in range(start, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


class ToolChoiceStreamer:
    """The service's choice streamer when calls are possible: content deltas, or tool-call deltas.

    When a grammar forces the call (``required``, a named function), the output is known to be
    one call, so it streams as OpenAI's does: the id and name as soon as they are written, then
    the arguments fragment by fragment. Otherwise text that may become a call is held back and
    sent, as calls or as content, once it is decided (:class:`ToolCallStream`).
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._buffered = ToolCallStream(plan)
        self._progressive = plan.mode in ("required", "function")
        self._text = ""
        self._name = ""
        self._call_id: str | None = None
        self._args_from = 0
        self._sent = 0
        self._args_end: int | None = None
        self._scanner = _ObjectEnd()

    def push(self, text: str) -> list[ChunkDelta]:
        if not self._progressive:
            out = self._buffered.push(text)
            return [ChunkDelta(content=out)] if out else []
        self._text += text
        return self._advance()

    def _advance(self) -> list[ChunkDelta]:
        out: list[ChunkDelta] = []
        if self._call_id is None:
            head = _CALL_HEAD.match(self._text)
            if head is None or head.end() >= len(self._text):
                return out
            if self._text[head.end()] != "{" or head.group(1) not in {f.name for f in self._plan.allowed()}:
                # Not the shape the grammar writes: decide at the end, as without a grammar.
                self._progressive = False
                return self.push(self._text)
            self._name = head.group(1)
            self._call_id = new_call_id()
            self._args_from = self._sent = head.end()
            first = ToolCallDelta(
                index=0,
                id=self._call_id,
                type="function",
                function=ToolCallFunctionDelta(name=self._name, arguments=""),
            )
            out.append(ChunkDelta(tool_calls=[first]))
        if self._args_end is None:
            end = self._scanner.feed(self._text, self._sent)
            upto = len(self._text) if end is None else end
            if upto > self._sent:
                fragment = ToolCallDelta(
                    index=0, function=ToolCallFunctionDelta(arguments=self._text[self._sent : upto])
                )
                out.append(ChunkDelta(tool_calls=[fragment]))
                self._sent = upto
            self._args_end = end
        return out

    def finish(self, text: str) -> tuple[list[ChunkDelta], bool]:
        """The last text; returns the deltas and whether the choice made tool calls."""
        deltas = self.push(text)
        if self._call_id is not None:
            calls = self._plan.parse(self._text)
            streamed = self._text[self._args_from : self._args_end or len(self._text)]
            if not calls or calls[0].name != self._name or calls[0].arguments_json() != streamed:
                # Cut short (max_tokens): the partial call stays as sent, as OpenAI's does.
                return deltas, False
            rest = to_tool_calls(calls[1:])
            deltas += [ChunkDelta(tool_calls=[d]) for d in tool_call_deltas(rest, first_index=1)]
            return deltas, True
        if self._progressive:  # the call never began: decide on the whole text
            self._progressive = False
            deltas += self.push(self._text)
        content, calls = self._buffered.finish()
        if content:
            deltas.append(ChunkDelta(content=content))
        deltas += [ChunkDelta(tool_calls=[d]) for d in tool_call_deltas(to_tool_calls(calls))]
        return deltas, bool(calls)


def tool_call_deltas(calls: Sequence[ToolCall], *, first_index: int = 0) -> Iterator[ToolCallDelta]:
    """OpenAI's streaming spelling: per call, ``index`` + ``id`` + name first, then argument fragments."""
    for i, call in enumerate(calls, start=first_index):
        yield ToolCallDelta(
            index=i, id=call.id, type="function", function=ToolCallFunctionDelta(name=call.function.name, arguments="")
        )
        args = call.function.arguments
        for start in range(0, len(args), ARGUMENT_FRAGMENT):
            yield ToolCallDelta(
                index=i, function=ToolCallFunctionDelta(arguments=args[start : start + ARGUMENT_FRAGMENT])
            )
