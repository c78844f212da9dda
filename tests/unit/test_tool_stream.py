"""Streaming a choice whose tools may be called (server/services/tool_stream.py)."""

from __future__ import annotations

import json

from server.prompting.tool_parse import ParsedCall, parse_tool_calls
from server.prompting.tools import to_tool_calls
from server.protocol import ChunkDelta
from server.services.tool_stream import ToolCallStream, ToolChoiceStreamer, tool_call_deltas
from tests.helpers.tool_defs import ALLOWED, plan

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
