"""Tool plans, the generic tool prompt, parsing model output into calls, streaming, grammars."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from server.errors import InvalidRequestError
from server.prompting.tool_parse import ParsedCall, parse_tool_calls
from server.prompting.tools import ToolPlan, generic_messages, plan_tools, to_tool_calls
from server.protocol import ChunkDelta
from server.services.tool_stream import ToolCallStream, ToolChoiceStreamer, tool_call_deltas

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMS},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def plan(choice: Any = None, *, style: Any = "generic", parallel: bool | None = None) -> ToolPlan:
    p = plan_tools([WEATHER, TIME], choice, parallel, style)
    assert p is not None
    return p


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


# ---- parsing ----------------------------------------------------------------------------------

ALLOWED = {"get_weather", "get_time"}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "parameters": {"city": "Paris"}}\n',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '<function=get_weather>{"city": "Paris"}</function>',
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    ],
)
def test_parse_one_call_in_every_spelling(text: str) -> None:
    assert parse_tool_calls(text, ALLOWED) == [ParsedCall("get_weather", {"city": "Paris"})]


def test_parse_several_calls() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_time", "parameters": {}}'
    assert parse_tool_calls(text, ALLOWED) == [ParsedCall("get_weather", {"city": "A"}), ParsedCall("get_time", {})]
    text = '{"name": "get_weather", "arguments": {"city": "A"}}\n{"name": "get_weather", "arguments": {"city": "B"}}'
    assert len(parse_tool_calls(text, ALLOWED)) == 2


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '{"name": "delete_everything", "parameters": {}}',  # an undeclared function stays content
        '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "rm_rf", "parameters": {}}',
        'Sure! {"name": "get_weather", "parameters": {"city": "Paris"}}',  # text beside the call
        '{"name": "get_weather", "parameters": {"city": "Paris"}} and that is it',
        '{"name": "Bob", "age": 42}',
        '{"name": "get_weather", "parameters": ["Paris"]}',
        '{"name": "get_weather", "parameters": {"city": "Par',  # cut off
        "",
        "{}",
        "[]",
    ],
)
def test_not_a_call_stays_content(text: str) -> None:
    assert parse_tool_calls(text, ALLOWED) == []


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


# ---- streaming --------------------------------------------------------------------------------


def feed(stream: ToolCallStream, pieces: list[str]) -> tuple[str, list[ParsedCall]]:
    out = "".join(stream.push(p) for p in pieces)
    rest, calls = stream.finish()
    return out + rest, calls


def test_stream_plain_text_is_released_at_once() -> None:
    s = ToolCallStream(plan())
    assert s.push("  ") == ""
    assert s.push("Hel") == "  Hel"
    assert s.push("lo") == "lo"
    assert s.finish() == ("", [])


def test_stream_call_is_held_and_becomes_calls() -> None:
    pieces = ['{"na', 'me": "get_weather", ', '"arguments": {"city"', ': "Paris"}}']
    s = ToolCallStream(plan())
    assert [s.push(p) for p in pieces] == ["", "", "", ""]
    assert s.finish() == ("", [ParsedCall("get_weather", {"city": "Paris"})])


def test_stream_json_that_is_not_a_call_comes_out_as_content() -> None:
    text, calls = feed(ToolCallStream(plan()), ['{"name": "Bob",', ' "age": 3}'])
    assert (text, calls) == ('{"name": "Bob", "age": 3}', [])


def test_stream_with_tool_choice_none_never_holds() -> None:
    s = ToolCallStream(plan("none"))
    assert s.push('{"name"') == '{"name"'


def test_stream_partial_tag_is_held_until_decided() -> None:
    s = ToolCallStream(plan())
    assert s.push("<tool") == ""
    assert s.push("bar>") == "<toolbar>"


def test_arguments_keep_the_models_own_text() -> None:
    (call,) = parse_tool_calls('{"name": "get_weather", "arguments": {"city":  "Paris" }}', ALLOWED)
    assert call.arguments_json() == '{"city":  "Paris" }'
    (call,) = parse_tool_calls('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', ALLOWED)
    assert call.arguments_json() == '{"city":"Oslo"}'  # a string of JSON is re-encoded
    (call,) = parse_tool_calls('<function=get_weather>{"city": "Rome"}</function>', ALLOWED)
    assert json.loads(call.arguments_json()) == {"city": "Rome"}


def reassemble(deltas: list[ChunkDelta]) -> tuple[str, dict[int, dict[str, str]]]:
    content = ""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        content += d.content or ""
        for t in d.tool_calls or []:
            slot = calls.setdefault(t.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += t.id or ""
            slot["name"] += (t.function.name or "") if t.function else ""
            slot["arguments"] += (t.function.arguments or "") if t.function else ""
    return content, calls


def test_forced_call_streams_progressively() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "unit": "celsius"}}  '
    streamer = ToolChoiceStreamer(plan("required"))
    per_piece = [streamer.push(ch) for ch in text]
    # The id and name go out as soon as the arguments object opens, before the arguments end.
    opened = text.index("{", 1)
    assert per_piece[opened] and per_piece[opened][0].tool_calls
    assert per_piece[opened][0].tool_calls[0].id is not None
    assert sum(1 for p in per_piece if p) > 10  # fragment by fragment
    rest, made = streamer.finish("")
    assert made
    content, calls = reassemble([d for p in per_piece for d in p] + rest)
    assert content == ""
    expected = plan("required").parse(text)
    assert expected is not None
    assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == expected[0].arguments_json()
    assert calls[0]["id"].startswith("call_")


def test_forced_call_cut_short_is_not_a_finished_call() -> None:
    streamer = ToolChoiceStreamer(plan("required"))
    sent = streamer.push('{"name": "get_weather", "arguments": {"city": "Pa')
    assert sent and sent[0].tool_calls
    _, made = streamer.finish("")
    assert not made  # the service then reports the engine's finish reason ("length")


def test_forced_mode_falls_back_when_the_output_is_not_the_grammar_shape() -> None:
    streamer = ToolChoiceStreamer(plan("required"))
    out = [d for piece in ["Hel", "lo"] for d in streamer.push(piece)]
    rest, made = streamer.finish("")
    content, calls = reassemble(out + rest)
    assert (content, calls, made) == ("Hello", {}, False)
    streamer = ToolChoiceStreamer(plan({"type": "function", "function": {"name": "get_time"}}))
    call = '{"name": "get_weather", "arguments": {"city": "X"}}'
    out = streamer.push(call)
    rest, made = streamer.finish("")
    assert reassemble(out + rest) == (call, {}) and not made  # not the forced function: content


def test_auto_mode_streamer_holds_then_sends_calls() -> None:
    streamer = ToolChoiceStreamer(plan())
    assert streamer.push('{"name": "get_weather", ') == []
    assert streamer.push('"arguments": {"city": "Paris"}}') == []
    rest, made = streamer.finish("")
    assert made
    assert reassemble(rest)[1][0]["arguments"] == '{"city": "Paris"}'


def test_tool_call_deltas_reassemble_into_the_call() -> None:
    calls = to_tool_calls([ParsedCall("get_weather", {"city": "Paris", "unit": "celsius"}), ParsedCall("get_time", {})])
    deltas = list(tool_call_deltas(calls))
    first = deltas[0]
    assert first.index == 0 and first.id == calls[0].id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather" and first.function.arguments == ""
    assert all(d.id is None and d.function is not None and d.function.name is None for d in deltas[1:] if d.index == 0)
    args: dict[int, str] = {}
    for d in deltas:
        assert d.function is not None
        args[d.index] = args.get(d.index, "") + (d.function.arguments or "")
    assert args == {0: calls[0].function.arguments, 1: calls[1].function.arguments}
    assert sum(1 for d in deltas if d.index == 0) > 2  # arguments arrive in fragments


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
