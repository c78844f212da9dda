"""Anthropic Messages requests -> the chat-shaped messages and OpenAI tools the chat template renders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine.base import FinishReason
from server.errors import InvalidRequestError
from server.protocol.anthropic import MessagesInput
from server.runtime.events import FinishEvent
from server.services.messages_output import stop_reason, tool_use_id
from server.services.messages_prompt import chat_messages, function_tools, openai_tool_choice


def request(messages: list[Any], **fields: Any) -> MessagesInput:
    return MessagesInput.model_validate({"model": "m", "messages": messages, **fields})


def plain(req: MessagesInput) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in chat_messages(req)]


def test_consecutive_turns_of_one_role_merge_into_one() -> None:
    req = request(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
        ]
    )
    assert plain(req) == [{"role": "user", "content": "a\n\nb\n\nc"}]


def test_tool_use_becomes_tool_calls_and_results_tool_messages_before_the_text() -> None:
    req = request(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and then?"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                ],
            },
        ]
    )
    out = plain(req)
    assert out[1]["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(out[1]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
        {"role": "user", "content": "and then?"},
    ]


def test_a_turn_of_only_tool_results_adds_no_empty_user_message() -> None:
    req = request(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": True}]},
        ]
    )
    assert plain(req)[-1] == {"role": "tool", "tool_call_id": "t", "content": "Error: "}


def test_system_string_blocks_and_messages_make_one_system_prompt_first() -> None:
    req = request(
        [{"role": "user", "content": "q"}, {"role": "system", "content": [{"type": "text", "text": "later"}]}],
        system=[{"type": "text", "text": "first"}],
    )
    assert plain(req) == [{"role": "system", "content": "first\n\nlater"}, {"role": "user", "content": "q"}]


def test_a_system_message_with_a_tool_block_is_refused() -> None:
    req = request(
        [
            {"role": "user", "content": "q"},
            {"role": "system", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ]
    )
    with pytest.raises(InvalidRequestError) as err:
        chat_messages(req)
    assert err.value.param == "messages[1]"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, (None, None)),
        ({"type": "auto"}, ("auto", None)),
        ({"type": "any"}, ("required", None)),
        ({"type": "any", "disable_parallel_tool_use": True}, ("required", False)),
        ({"type": "tool", "name": "f"}, ({"type": "function", "function": {"name": "f"}}, None)),
        ({"type": "none"}, ("none", None)),
    ],
)
def test_tool_choice_maps_onto_openais(choice: Any, expected: Any) -> None:
    fields = {"tool_choice": choice} if choice is not None else {}
    assert openai_tool_choice(request([{"role": "user", "content": "q"}], **fields)) == expected


def test_tools_become_function_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    req = request(
        [{"role": "user", "content": "q"}],
        tools=[{"name": "w", "description": "weather", "input_schema": schema, "strict": True, "type": "custom"}],
    )
    assert function_tools(req) == [
        {"type": "function", "function": {"name": "w", "description": "weather", "parameters": schema, "strict": True}}
    ]


def finish(reason: FinishReason, stop: str | None = None) -> FinishEvent:
    return FinishEvent(reason, "", 1, 1, 0, stop)


def test_stop_reasons() -> None:
    assert stop_reason(finish(FinishReason.STOP), made_calls=False) == ("end_turn", None)
    assert stop_reason(finish(FinishReason.STOP, "###"), made_calls=False) == ("stop_sequence", "###")
    assert stop_reason(finish(FinishReason.LENGTH), made_calls=False) == ("max_tokens", None)
    assert stop_reason(finish(FinishReason.STOP), made_calls=True) == ("tool_use", None)
    assert stop_reason(None, made_calls=False) == ("max_tokens", None)  # max_tokens 0


def test_tool_use_ids_keep_the_call_id() -> None:
    assert tool_use_id("call_abc") == "toolu_abc"
    assert tool_use_id().startswith("toolu_") and tool_use_id() != tool_use_id()
