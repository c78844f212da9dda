"""Joining a speaker's consecutive turns, as chat templates need roles to alternate."""

from __future__ import annotations

from server.protocol import ChatMessage, FunctionCall, ToolCall
from server.services.turns import append_turn


def call(name: str) -> ToolCall:
    return ToolCall(id=f"call_{name}", function=FunctionCall(name=name, arguments="{}"))


def test_a_speakers_consecutive_turns_become_one_and_other_roles_stay_apart() -> None:
    out: list[ChatMessage] = []
    for m in [
        ChatMessage(role="system", content="Be terse."),
        ChatMessage(role="system", content="Really."),
        ChatMessage(role="user", content="Hi."),
        ChatMessage(role="user", content="Still there?"),
        ChatMessage(role="assistant", content="Yes.", tool_calls=[call("a")], reasoning_content="hm"),
        ChatMessage(role="assistant", content="", tool_calls=[call("b")]),
    ]:
        append_turn(out, m)
    assert [m.role for m in out] == ["system", "system", "user", "assistant"]
    assert out[2].content == "Hi.\n\nStill there?"
    assert out[3].content == "Yes."  # an empty text adds no separator
    assert [c.function.name for c in out[3].tool_calls or []] == ["a", "b"]
    assert out[3].reasoning_content == "hm"
