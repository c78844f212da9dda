"""Model output -> tool calls, in every spelling models write them (server/prompting/tool_parse.py)."""

from __future__ import annotations

import pytest

from server.prompting.tool_parse import ParsedCall, parse_tool_calls
from tests.helpers.tool_defs import ALLOWED

# ---- parsing ----------------------------------------------------------------------------------


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
