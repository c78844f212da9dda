"""Consecutive turns of one speaker, made one: what chat templates expect of a conversation.

Anthropic's and the Responses API's inputs may hold two user (or assistant) turns in a row, where
most chat templates require roles to alternate; such turns are joined, their texts by a blank line,
their tool calls in order. System and tool messages stay separate.
"""

from __future__ import annotations

from server.protocol import ChatMessage

TURN_SEPARATOR = "\n\n"


def append_turn(out: list[ChatMessage], message: ChatMessage) -> None:
    """Append ``message`` to ``out``, joined to the last turn when both are the same speaker's."""
    last = out[-1] if out else None
    if last is None or last.role != message.role or message.role not in ("user", "assistant"):
        out.append(message)
        return
    content = TURN_SEPARATOR.join(c for c in (last.content, message.content) if isinstance(c, str) and c)
    calls = [*(last.tool_calls or []), *(message.tool_calls or [])] or None
    reasoning = last.reasoning_content or message.reasoning_content
    out[-1] = last.model_copy(update={"content": content, "tool_calls": calls, "reasoning_content": reasoning})
