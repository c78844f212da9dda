"""Reasoning (``<think>...</think>``) split from a chat reply, as llama-server's ``--reasoning-format
deepseek`` does: the thinking goes to ``reasoning_content`` (on the message, or as stream deltas), the
rest is the content (and what tool calls are parsed from).

A :class:`ReasoningSplitter` is fed one token's text at a time, in the streamed and the whole-response
paths alike, so both give the same split. It holds back only what may still be a tag (``<thi``,
``</th``) or whitespace at the edges of the thinking, which is dropped. A template that opens the
thinking itself (its generation prompt ends with ``<think>``, as DeepSeek-R1's and Qwen3's do) starts
the reply inside it. Tokens generated before the thinking closes count as ``reasoning_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from server.errors import UnsupportedFieldError
from server.prompting.chat_template import ChatTemplate
from server.protocol import ChatCompletionRequest, ChunkDelta

OPEN, CLOSE = "<think>", "</think>"
Piece = tuple[Literal["reasoning", "content"], str]


def opens_thinking(prompt: str) -> bool:
    """Whether the prompt leaves a thinking block open (the reply starts inside it)."""
    return prompt.rstrip().endswith(OPEN)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``tag`` (it may complete next token)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    def __init__(self, *, open_at_start: bool = False) -> None:
        # start: nothing but whitespace yet; thinking; after: just closed (leading whitespace dropped); content
        self._state = "thinking" if open_at_start else "start"
        self._held = ""
        self._thought = open_at_start
        self._fresh = True  # at the start of the thinking: leading whitespace is dropped
        self._opened = False  # this token's text opened the thinking
        self._pending = 0  # tokens held at the start, before it is known whether they open it
        self.reasoning_tokens = 0

    @property
    def passes_through(self) -> bool:
        """Past the thinking (or there was none): from here on every text is content, as it came."""
        return self._state == "content"

    def push(self, text: str) -> list[Piece]:
        """One token's text; returns what can be sent now."""
        thinking = self._thought and self._state == "thinking"
        out = self._feed(self._held + text)
        if self._state == "start":
            self._pending += 1  # held: part of <think> if it completes
        elif self._opened:
            self.reasoning_tokens += self._pending + 1  # the tokens that wrote <think>
        elif thinking:  # inside the thinking, or its closing tag
            self.reasoning_tokens += 1
        self._opened = False
        return out

    def finish(self) -> list[Piece]:
        """The end of the reply: what was held goes out (an unclosed thinking stays reasoning)."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return [("reasoning", held.rstrip())] if held.strip() else []
        return [("content", held)] if held and (self._state == "content" or held.strip()) else []

    def _feed(self, text: str) -> list[Piece]:
        self._held = ""
        out: list[Piece] = []
        while text:
            if self._state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    self._state, text = "thinking", stripped[len(OPEN) :]
                    self._thought = self._opened = True
                    continue
                if OPEN.startswith(stripped):
                    self._held = text  # may still become <think>
                    return out
                self._state = "content"
            elif self._state == "thinking":
                if self._fresh:
                    text = text.lstrip()
                    if not text:
                        return out
                    self._fresh = False
                at = text.find(CLOSE)
                if at >= 0:
                    if text[:at].rstrip():
                        out.append(("reasoning", text[:at].rstrip()))
                    self._state, text = "after", text[at + len(CLOSE) :]
                    continue
                keep = _partial_suffix(text, CLOSE)
                body = text[: len(text) - keep]
                sendable = body.rstrip()  # trailing whitespace waits: it is dropped before </think>
                self._held = body[len(sendable) :] + text[len(text) - keep :]
                if sendable:
                    out.append(("reasoning", sendable))
                return out
            elif self._state == "after":
                text = text.lstrip()
                if not text:
                    return out
                self._state = "content"
            else:
                out.append(("content", text))
                return out
        return out


def split_all(splitter: ReasoningSplitter, texts: Sequence[str]) -> tuple[str | None, str]:
    """Every token's text of a finished reply -> (reasoning or None, content)."""
    pieces = [p for t in texts for p in splitter.push(t)] + splitter.finish()
    reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
    content = "".join(t for kind, t in pieces if kind == "content")
    return (reasoning or None), content


def reasoning_deltas(pieces: Sequence[Piece]) -> tuple[list[ChunkDelta], str]:
    """Stream deltas for the reasoning pieces, and the content text left for the content streamer."""
    deltas = [ChunkDelta(reasoning_content=t) for kind, t in pieces if kind == "reasoning" and t]
    return deltas, "".join(t for kind, t in pieces if kind == "content")


def template_variables(req: ChatCompletionRequest, template: ChatTemplate) -> dict[str, Any]:
    """The request's template variables: ``reasoning_effort`` as the thinking switch Qwen3-style
    (``enable_thinking``) and gpt-oss-style (``reasoning_effort``) templates read, then the request's
    own ``chat_template_kwargs``, which win."""
    out: dict[str, Any] = {}
    effort = req.reasoning_effort
    if effort is not None:
        if not template.reads & {"enable_thinking", "reasoning_effort"}:
            raise UnsupportedFieldError(
                "reasoning_effort", "has no effect here: this model's chat template has no switch for thinking"
            )
        out = {"enable_thinking": effort != "none", "reasoning_effort": effort}
    return {**out, **(req.chat_template_kwargs or {})}
