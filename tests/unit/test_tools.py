"""Tool plans, the generic tool prompt, grammars, and parsing through a plan (server/prompting/tools.py)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from server.errors import InvalidRequestError
from server.prompting.tool_parse import ParsedCall, parse_tool_calls
from server.prompting.tools import generic_messages, plan_tools, to_tool_calls
from tests.helpers.tool_defs import ALLOWED, TIME, WEATHER, WEATHER_PARAMS, plan

# ---- plan_tools -------------------------------------------------------------------------------


def test_no_tools_means_no_plan() -> None:
    assert plan_tools(None, None, None, "generic") is None
    assert plan_tools([], "auto", None, "generic") is None
    assert plan_tools(None, "none", None, "llama3") is None


def test_modes() -> None:
    assert plan().mode == "auto"
    assert plan("none").mode == "none" and not plan("none").calls_enabled
    assert plan("required").mode == "required"
    named = plan({"type": "function", "function": {"name": "get_time"}})
    assert named.mode == "function" and named.forced == "get_time"
    assert [f.name for f in named.allowed()] == ["get_time"]
    assert plan().parallel and not plan(parallel=False).parallel


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "retrieval"}], None, "tools[0]"),
        ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None, "tools[0].function.parameters"),
        ([WEATHER, WEATHER], None, "tools"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([WEATHER], {"type": "function"}, "tool_choice"),
        (None, "required", "tool_choice"),
        (None, {"type": "function", "function": {"name": "get_weather"}}, "tool_choice"),
    ],
)
def test_invalid_tool_fields_are_400s_naming_the_field(tools: Any, choice: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan_tools(tools, choice, None, "generic")
    assert info.value.param == param
    assert info.value.status_code == 400


def test_prompt_tools_hidden_when_tool_choice_is_none() -> None:
    assert plan("none").prompt_tools() is None
    assert plan("auto").prompt_tools() == [WEATHER, TIME]


# ---- parsing through the plan -------------------------------------------------------------------


def test_plan_parse_respects_mode_forced_function_and_parallel() -> None:
    two = '{"name": "get_weather", "arguments": {"city": "A"}}\n{"name": "get_time", "arguments": {}}'
    assert plan("none").parse(two) is None
    assert len(plan().parse(two) or []) == 2
    assert [c.name for c in plan(parallel=False).parse(two) or []] == ["get_weather"]
    forced = plan({"type": "function", "function": {"name": "get_time"}})
    assert forced.parse(two) is None  # names a function other than the forced one
    assert forced.parse('{"name": "get_time", "arguments": {}}') == [ParsedCall("get_time", {})]


def test_to_tool_calls_has_openai_shape() -> None:
    (call,) = to_tool_calls([ParsedCall("get_weather", {"city": "Zürich"})])
    assert call.id.startswith("call_") and len(call.id) > 10
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Zürich"}
    assert isinstance(call.function.arguments, str)


# ---- the generic prompt -----------------------------------------------------------------------


def test_generic_messages_put_tools_in_the_system_prompt() -> None:
    out = generic_messages([{"role": "user", "content": "Weather in Paris?"}], plan("required"))
    assert out[0]["role"] == "system"
    assert '"name": "get_weather"' in out[0]["content"]
    assert '{"name": "<tool name>", "arguments"' in out[0]["content"]
    assert "You must call one of the tools" in out[0]["content"]
    assert out[1] == {"role": "user", "content": "Weather in Paris?"}
    kept = generic_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}], plan())
    assert kept[0]["content"].startswith("Be brief.\n\nYou can call")
    named = generic_messages(
        [{"role": "user", "content": "x"}], plan({"type": "function", "function": {"name": "get_time"}})
    )
    assert 'You must call the tool "get_time"' in named[0]["content"]


def test_generic_messages_fold_a_tool_exchange_into_context() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in A and B?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "A"}}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "B"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "20C"},
        {"role": "tool", "tool_call_id": "c2", "content": "25C"},
    ]
    out = generic_messages(history, plan("none"))  # no tools shown, history still rendered
    assert out == [
        {
            "role": "user",
            "content": 'Weather in A and B?\n\n[get_weather({"city": "A"}) returned: 20C]'
            '\n\n[get_weather({"city": "B"}) returned: 25C]',
        }
    ]


def test_generic_messages_keep_assistant_text_and_alternation() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in A?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "A"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "20C"},
        {"role": "assistant", "content": "It is 20C."},
        {"role": "user", "content": "Thanks"},
    ]
    out = generic_messages(history, plan())
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out[2] == {"role": "assistant", "content": "Let me look."}
    assert out[3]["content"] == '[get_weather({"city": "A"}) returned: 20C]'
    assert all("tool_calls" not in m for m in out)


# ---- grammars ---------------------------------------------------------------------------------


def test_no_grammar_unless_a_call_is_required() -> None:
    assert plan().grammar() is None
    assert plan("none").grammar() is None
    assert plan("required").grammar() is not None


def test_required_grammar_names_every_declared_function_and_the_argument_key() -> None:
    g = plan("required").grammar() or ""
    assert "root ::=" in g
    assert "get_weather" in g and "get_time" in g
    assert "arguments" in g and "parameters" not in g
    g3 = plan("required", style="llama3").grammar() or ""
    assert "parameters" in g3


def test_named_grammar_only_allows_the_named_function() -> None:
    g = plan({"type": "function", "function": {"name": "get_time"}}).grammar() or ""
    assert "get_time" in g and "get_weather" not in g


def test_grammar_hoists_schema_definitions() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "route",
            "parameters": {
                "type": "object",
                "properties": {"legs": {"type": "array", "items": {"$ref": "#/$defs/leg"}}},
                "$defs": {"leg": {"type": "object", "properties": {"to": {"type": "string"}}}},
            },
        },
    }
    p = plan_tools([tool], "required", None, "generic")
    assert p is not None
    assert "root ::=" in (p.grammar() or "")


def test_strict_tool_with_unenforceable_keyword_is_a_400_on_tools() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"x": {"type": "string", "pattern": "^a+$"}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
    }
    p = plan_tools([tool], "required", None, "generic")
    assert p is not None
    with pytest.raises(InvalidRequestError) as info:
        p.grammar()
    assert info.value.param == "tools"


def test_parsed_arguments_validate_against_the_schema() -> None:
    (call,) = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}', ALLOWED)
    jsonschema.validate(dict(call.arguments), WEATHER_PARAMS)
