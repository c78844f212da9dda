"""The native Llama 3.1 builder against Meta's official template, byte for byte.

The reference is the official Jinja text (``/work/shared/reference`` copy, also kept in
``tests/fixtures``) rendered the way Hugging Face renders it: ``ImmutableSandboxedEnvironment``
with ``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson`` = ``json.dumps(
ensure_ascii=False)`` and ``raise_exception``; built here, independently of server code.
Both sides get the same normalised messages and the same date.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import InvalidRequestError
from server.prompting import llama3
from server.prompting.chat_template import normalize_messages
from tests.fixtures.tiny_llama3 import OFFICIAL_TEMPLATE

DATE = "26 Nov 2026"


class _Refused(Exception):
    pass


def _hf_tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise _Refused(message)


def official(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, gen: bool = True) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _hf_tojson
    env.globals["raise_exception"] = _raise_exception
    template = env.from_string(OFFICIAL_TEMPLATE)
    kwargs: dict[str, Any] = {"messages": messages, "add_generation_prompt": gen, "bos_token": "<|begin_of_text|>"}
    kwargs["date_string"] = DATE
    if tools is not None:  # Hugging Face passes `tools` only when the caller gives some
        kwargs["tools"] = tools
    return template.render(**kwargs)


def tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


WEATHER = tool(
    "get_weather",
    "Get the current weather in a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
)
NESTED = tool(
    "book_trip",
    "Book a trip with travellers and legs. Ünïcödé désc 🚆",
    {
        "type": "object",
        "properties": {
            "travellers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                    "required": ["name"],
                },
            },
            "legs": {
                "type": "array",
                "items": {"$ref": "#/$defs/leg"},
            },
            "options": {
                "type": "object",
                "properties": {"refundable": {"type": "boolean"}, "budget": {"type": ["number", "null"]}},
                "additionalProperties": False,
            },
        },
        "required": ["travellers", "legs"],
        "$defs": {"leg": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
    },
)
NO_PARAMS = tool("get_time", "What time is it?", {"type": "object", "properties": {}})
BARE = {"type": "function", "function": {"name": "ping"}}


def call(name: str, arguments: Any, call_id: str = "call_abc123") -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello!"}
A1 = {"role": "assistant", "content": "Hi! How can I help you today?"}
U2 = {"role": "user", "content": "What is 2+2?"}
WX_Q = {"role": "user", "content": "What's the weather in Paris?"}
WX_CALL = {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Paris"})]}
WX_RESULT_STR = {"role": "tool", "tool_call_id": "call_abc123", "content": "21 degrees, sunny"}
WX_RESULT_JSON = {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temp_c": 21, "sky": "sunny"}'}
WX_ANSWER = {"role": "assistant", "content": "It is 21 °C and sunny in Paris."}

# (id, messages, tools, add_generation_prompt)
CORPUS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None, bool]] = [
    ("user-only", [U1], None, True),
    ("system-user", [SYS, U1], None, True),
    ("system-user-no-gen", [SYS, U1], None, False),
    ("multi-turn", [SYS, U1, A1, U2], None, True),
    ("multi-turn-no-system", [U1, A1, U2], None, True),
    ("history-ends-assistant-no-gen", [SYS, U1, A1], None, False),
    ("empty-system", [{"role": "system", "content": ""}, U1], None, True),
    ("empty-user", [{"role": "user", "content": ""}], None, True),
    ("empty-assistant", [U1, {"role": "assistant", "content": ""}, U2], None, True),
    ("null-assistant-content", [U1, {"role": "assistant", "content": None}, U2], None, True),
    (
        "whitespace-trimmed",
        [{"role": "system", "content": "  sys \n\n"}, {"role": "user", "content": "\n\t hi  \n"}],
        None,
        True,
    ),
    ("inner-newlines-kept", [{"role": "user", "content": "line 1\n\nline 2\n  indented"}], None, True),
    ("unicode", [{"role": "user", "content": "Grüß dich! Ça va? 日本語で答えて。"}], None, True),
    ("emoji", [SYS, {"role": "user", "content": "🦙🔥 tell me a joke 😂👍🏽"}], None, True),
    ("rtl-and-zwj", [{"role": "user", "content": "مرحبا 👨‍👩‍👧‍👦 שלום"}], None, True),
    ("special-looking-text", [{"role": "user", "content": "what is <|eot_id|>? and {{ x }} {% raw %}"}], None, True),
    ("quotes-backslashes", [{"role": "user", "content": "say \"hi\" \\ and 'bye'"}], None, True),
    (
        "content-parts",
        [{"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]}],
        None,
        True,
    ),
    ("content-parts-system", [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, U1], None, True),
    ("developer-role", [{"role": "developer", "content": "Answer in French."}, U1], None, True),
    ("system-mid-conversation", [U1, A1, {"role": "system", "content": "Now be terse."}, U2], None, True),
    (
        "long-history",
        [SYS]
        + [
            m
            for i in range(6)
            for m in ({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"})
        ]
        + [U2],
        None,
        True,
    ),
    ("tools-single", [WX_Q], [WEATHER], True),
    ("tools-with-system", [SYS, WX_Q], [WEATHER], True),
    ("tools-multiple", [SYS, WX_Q], [WEATHER, NO_PARAMS, NESTED], True),
    ("tools-nested-schema", [{"role": "user", "content": "Book Ann (30) Paris->Rome"}], [NESTED], True),
    ("tools-no-parameters", [{"role": "user", "content": "Time?"}], [NO_PARAMS], True),
    ("tools-bare-function", [{"role": "user", "content": "ping it"}], [BARE], True),
    ("tools-unicode-user", [{"role": "user", "content": "Météo à Zürich ☀️?"}], [WEATHER], True),
    (
        "tools-first-user-parts",
        [
            SYS,
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Oslo?"}]},
        ],
        [WEATHER],
        True,
    ),
    ("tools-empty-first-user", [SYS, {"role": "user", "content": "  "}], [WEATHER], True),
    ("tools-multi-turn", [SYS, U1, A1, WX_Q], [WEATHER], True),
    ("tool-call-history", [SYS, WX_Q, WX_CALL], [WEATHER], False),
    ("tool-result-string", [SYS, WX_Q, WX_CALL, WX_RESULT_STR], [WEATHER], True),
    ("tool-result-json", [SYS, WX_Q, WX_CALL, WX_RESULT_JSON], [WEATHER], True),
    ("tool-round-trip-answered", [SYS, WX_Q, WX_CALL, WX_RESULT_JSON, WX_ANSWER, U2], [WEATHER], True),
    (
        "tool-result-unicode",
        [WX_Q, WX_CALL, {"role": "tool", "tool_call_id": "c", "content": "Température: 21 °C ☀️"}],
        [WEATHER],
        True,
    ),
    ("tool-result-empty", [WX_Q, WX_CALL, {"role": "tool", "tool_call_id": "c", "content": ""}], [WEATHER], True),
    (
        "tool-result-parts",
        [WX_Q, WX_CALL, {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "21C"}]}],
        [WEATHER],
        True,
    ),
    (
        "tool-call-nested-args",
        [
            {"role": "user", "content": "Book it"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call(
                        "book_trip",
                        {
                            "travellers": [{"name": "Zoë", "age": 30}],
                            "legs": [{"from": "Paris", "to": "Roma"}],
                            "options": {"refundable": True, "budget": None},
                        },
                    )
                ],
            },
            {"role": "tool", "tool_call_id": "x", "content": '{"ok": true, "ref": "ABC"}'},
        ],
        [NESTED],
        True,
    ),
    (
        "tool-call-empty-args",
        [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "tool_calls": [call("get_time", {})]},
            {"role": "tool", "tool_call_id": "x", "content": "12:00"},
        ],
        [NO_PARAMS],
        True,
    ),
    (
        "tool-call-with-content-dropped",
        [
            WX_Q,
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", {"city": "Paris"})]},
            WX_RESULT_STR,
        ],
        [WEATHER],
        True,
    ),
    (
        "tool-call-args-not-json",
        [
            WX_Q,
            {"role": "assistant", "content": None, "tool_calls": [call("get_weather", "city=Paris")]},
            WX_RESULT_STR,
        ],
        [WEATHER],
        True,
    ),
    ("tool-history-without-tools", [SYS, WX_Q, WX_CALL, WX_RESULT_STR], None, True),
    (
        "two-tool-rounds",
        [
            SYS,
            WX_Q,
            WX_CALL,
            WX_RESULT_STR,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("get_weather", {"city": "Lyon", "unit": "celsius"}, "call_2")],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "18"},
        ],
        [WEATHER],
        True,
    ),
    (
        "tool-args-unicode-emoji",
        [WX_Q, {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Zürich 🇨🇭"})]}],
        [WEATHER],
        False,
    ),
    ("tools-only-system", [SYS, {"role": "assistant", "content": "I start."}], [WEATHER], True),
]


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("messages", "tools", "gen"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_native_builder_is_byte_identical_to_official_template(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool
) -> None:
    normalised = normalize_messages(messages)
    expected = official(normalised, tools, gen=gen)
    assert llama3.render(normalised, tools=tools, add_generation_prompt=gen, date=DATE) == expected


def test_known_golden_string() -> None:
    # The prompt-format notes' checked example, as a fixed point independent of Jinja.
    got = llama3.render(normalize_messages([SYS, U1]), date="26 Jul 2024")
    assert got == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_tool_result_string_is_json_quoted_and_arguments_are_not_double_encoded() -> None:
    got = llama3.render(normalize_messages([WX_Q, WX_CALL, WX_RESULT_JSON]), tools=[WEATHER], date=DATE)
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in got
    assert (
        '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"temp_c\\": 21, \\"sky\\": \\"sunny\\"}"<|eot_id|>' in got
    )
    assert got.count("<|begin_of_text|>") == 1
    assert "Environment: ipython\n" in got


def test_date_defaults_to_today_in_template_format() -> None:
    assert llama3.date_string(dt.date(2024, 7, 5)) == "05 Jul 2024"
    assert f"Today Date: {llama3.date_string()}\n" in llama3.render(normalize_messages([U1]))


def test_tools_without_any_message_is_refused_like_the_template() -> None:
    with pytest.raises(_Refused):
        official(normalize_messages([SYS]), [WEATHER])
    with pytest.raises(InvalidRequestError, match="no first user message"):
        llama3.render(normalize_messages([SYS]), tools=[WEATHER], date=DATE)


def test_parallel_calls_render_as_one_assistant_turn_each() -> None:
    two = {
        "role": "assistant",
        "tool_calls": [call("get_weather", {"city": "A"}), call("get_weather", {"city": "B"}, "c2")],
    }
    with pytest.raises((_Refused, TemplateError)):
        official(normalize_messages([WX_Q, two]), [WEATHER])
    got = llama3.render(normalize_messages([WX_Q, two]), tools=[WEATHER], date=DATE, add_generation_prompt=False)
    head = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert got.endswith(
        head
        + '{"name": "get_weather", "parameters": {"city": "A"}}<|eot_id|>'
        + head
        + '{"name": "get_weather", "parameters": {"city": "B"}}<|eot_id|>'
    )
