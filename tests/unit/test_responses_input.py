"""Responses input items -> the chat messages a template renders, the stored items, and the tools."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from server.errors import InvalidRequestError
from server.protocol.responses import InputItem, ResponseCreateRequest
from server.services.responses_input import (
    chat_messages,
    function_tools,
    parse_stored,
    request_items,
    stored_items,
    tool_choice,
)

ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


def items(*raw: Any) -> list[InputItem]:
    return ITEMS.validate_python(list(raw))


def plain(messages: Any) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in messages]


def test_instructions_and_system_turns_are_one_system_prompt_first() -> None:
    got = chat_messages(
        "Be brief.",
        items(
            {"role": "user", "content": "Hi."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Capital?"}]},
        ),
    )
    assert plain(got) == [
        {"role": "system", "content": "Be brief.\n\nAnswer in French."},
        {"role": "user", "content": "Hi.\n\nCapital?"},  # consecutive user turns are one
    ]


def test_calls_and_outputs_become_one_assistant_turn_and_tool_messages() -> None:
    got = chat_messages(
        None,
        items(
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Two."}]},
            {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sun, rain."}]},
        ),
    )
    assert [m.role for m in got] == ["user", "assistant", "tool", "tool", "assistant"]
    calls = got[1].tool_calls or []
    assert [(c.id, c.function.arguments) for c in calls] == [
        ("call_1", '{"city":"Paris"}'),
        ("call_2", '{"city":"Rome"}'),
    ]
    assert got[1].reasoning_content == "Two."  # the thinking goes with the turn after it
    assert [(m.tool_call_id, m.content) for m in got[2:4]] == [("call_1", "sunny"), ("call_2", "rain")]
    assert got[4].content == "Sun, rain."


def test_a_string_input_is_one_user_message() -> None:
    req = ResponseCreateRequest(input="Hi.")
    assert plain(chat_messages(None, request_items(req))) == [{"role": "user", "content": "Hi."}]
    assert request_items(ResponseCreateRequest()) == []


def test_stored_items_have_ids_and_the_spec_shape_and_read_back_the_same() -> None:
    given = items(
        {"role": "user", "content": "Hi."},
        {"id": "msg_mine", "role": "assistant", "content": "Hello."},
        {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
    )
    stored = stored_items(given)
    assert [s["id"].split("_")[0] for s in stored] == ["msg", "msg", "fc", "fco"]
    assert stored[1]["id"] == "msg_mine"  # the client's own id is kept
    assert stored[0]["content"] == [{"type": "input_text", "text": "Hi."}]
    assert stored[1]["content"] == [{"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}]
    assert all(s["status"] == "completed" for s in stored)
    assert plain(chat_messages(None, parse_stored(stored))) == plain(chat_messages(None, given))


def test_flat_function_tools_are_nested_for_the_planner_and_strict_by_default() -> None:
    flat = {"type": "function", "name": "w", "parameters": {"type": "object", "properties": {}}}
    nested_form = {"type": "function", "function": {"name": "v", "strict": False}}
    nested, echoed = function_tools(ResponseCreateRequest(tools=[flat, nested_form]))
    empty = {"type": "object", "properties": {}}
    assert nested == [
        {"type": "function", "function": {"name": "w", "parameters": empty, "strict": True}},
        {"type": "function", "function": {"name": "v", "parameters": empty, "strict": False}},
    ]
    assert echoed[0] == {**flat, "description": None, "strict": True}
    with pytest.raises(InvalidRequestError) as err:
        function_tools(ResponseCreateRequest(tools=[{"type": "function", "name": "w", "colour": "red"}]))
    assert err.value.param == "tools[0].colour"


def test_tool_choice_flat_names_and_allowed_tools() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    named = ResponseCreateRequest(tool_choice={"type": "function", "name": "b"})
    assert tool_choice(named, tools) == ({"type": "function", "function": {"name": "b"}}, tools)
    subset = ResponseCreateRequest(
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "a"}]}
    )
    assert tool_choice(subset, tools) == ("required", tools[:1])
    unknown = ResponseCreateRequest(
        tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "z"}]}
    )
    with pytest.raises(InvalidRequestError) as err:
        tool_choice(unknown, tools)
    assert err.value.param == "tool_choice.tools"
