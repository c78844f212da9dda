"""Anthropic's Messages API through the official ``anthropic`` SDK, against the fake engine.

Every response and stream event is parsed strictly with the SDK's own types (``wire_hook``), and
the prompt the engine was given is read back, so the tests state what a model is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.settings import Settings
from tests.helpers.anthropic_wire import wire_hook
from tests.helpers.recording_engine import RecordingEngine

MODEL = "fake-model"
USER = {"role": "user", "content": "Capital of France?"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TWO_CALLS = (
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"zone": "CET"}}]'
)


def reply(prompt: str) -> str:
    if "returned:" in prompt:  # a tool result is in the conversation: answer from it
        return "It is sunny in Paris."
    if "TWO CALLS" in prompt:
        return TWO_CALLS
    if "You can call these tools" in prompt and "weather" in prompt.split("<|im_start|>user")[-1]:
        return CALL
    return "Paris is the capital of France."


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(reply=reply, n_slots=2, n_ctx_per_seq=2048)


@pytest.fixture
def checked() -> list[str]:
    return []


@pytest.fixture
def client(engine: RecordingEngine, checked: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_queue=4), engine=engine)) as c:
        c.event_hooks["response"].append(wire_hook(checked))
        yield c


@pytest.fixture
def sdk(client: TestClient) -> anthropic.Anthropic:
    # TestClient is an httpx.Client: the real SDK talks to the app in-process.
    return anthropic.Anthropic(base_url="http://testserver", api_key="unused", http_client=client, max_retries=0)


def create(sdk: anthropic.Anthropic, **kwargs: Any) -> Any:
    return sdk.messages.create(model=MODEL, max_tokens=kwargs.pop("max_tokens", 64), **kwargs)


def test_create_answers_with_a_text_block_and_real_usage(
    sdk: anthropic.Anthropic, engine: RecordingEngine, checked: list[str]
) -> None:
    m = create(sdk, system="Be terse.", messages=[USER])
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL and m.id.startswith("msg_")
    assert [(b.type, b.text) for b in m.content] == [("text", "Paris is the capital of France.")]
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.output_tokens == len("Paris is the capital of France.")
    # The three input counts add up to the prompt the engine read (+1: the BOS token).
    assert (
        m.usage.input_tokens + m.usage.cache_read_input_tokens + m.usage.cache_creation_input_tokens
        == len(engine.prompts[0].encode()) + 1
    )
    assert engine.prompts[0].startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nCapital")
    assert checked == ["message"]


def test_a_repeated_prompt_reads_its_prefix_from_the_cache(sdk: anthropic.Anthropic) -> None:
    first = create(sdk, messages=[USER])
    second = create(sdk, messages=[USER])
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 0
    total = second.usage.input_tokens + second.usage.cache_read_input_tokens
    assert total == first.usage.input_tokens  # the same prompt, now mostly cached


def test_count_tokens_is_the_prompt_a_create_processes(sdk: anthropic.Anthropic, checked: list[str]) -> None:
    body: dict[str, Any] = {"system": [{"type": "text", "text": "Be terse."}], "messages": [USER], "tools": [WEATHER]}
    counted = sdk.messages.count_tokens(model=MODEL, **body).input_tokens
    m = create(sdk, **body)
    assert counted == m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert counted > sdk.messages.count_tokens(model=MODEL, messages=[USER]).input_tokens  # the tools count
    assert checked[:2] == ["count_tokens", "message"]


def test_stream_text_and_final_message(sdk: anthropic.Anthropic, checked: list[str]) -> None:
    with sdk.messages.stream(model=MODEL, max_tokens=64, messages=[USER]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == "Paris is the capital of France."
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == "".join(pieces)  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len("Paris is the capital of France.")
    assert checked == ["stream"]


def test_stream_usage_in_message_delta_matches_a_create(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model=MODEL, max_tokens=64, messages=[USER]) as stream:
        streamed = stream.get_final_message().usage
    created = create(sdk, messages=[USER]).usage
    assert streamed.output_tokens == created.output_tokens
    assert streamed.input_tokens + (streamed.cache_read_input_tokens or 0) == created.input_tokens + (
        created.cache_read_input_tokens or 0
    )


def test_stop_sequences_give_stop_sequence(sdk: anthropic.Anthropic) -> None:
    m = create(sdk, messages=[USER], stop_sequences=["zzz", "capital"])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "capital"
    assert m.content[0].text == "Paris is the "  # type: ignore[union-attr]
    with sdk.messages.stream(model=MODEL, max_tokens=64, messages=[USER], stop_sequences=["France"]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "France"


def test_max_tokens_gives_max_tokens(sdk: anthropic.Anthropic) -> None:
    m = create(sdk, messages=[USER], max_tokens=5)
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Paris"  # type: ignore[union-attr]
    assert m.usage.output_tokens == 5
    empty = create(sdk, messages=[USER], max_tokens=0)  # a cache prewarm: nothing generated
    assert empty.content == [] and empty.stop_reason == "max_tokens" and empty.usage.output_tokens == 0


def test_sampling_fields_in_the_body_are_honoured(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    # The SDK dropped these parameters, so clients send them in the body.
    create(sdk, messages=[USER], extra_body={"temperature": 0.25, "top_p": 0.5, "top_k": 7})
    p = engine.params[-1]
    assert (p.temperature, p.top_p, p.top_k) == (0.25, 0.5, 7)


# ---- what agents send -------------------------------------------------------------------------


def test_a_system_message_inside_messages_joins_the_system_prompt(
    sdk: anthropic.Anthropic, engine: RecordingEngine
) -> None:
    messages: Any = [
        USER,
        {"role": "assistant", "content": "Paris."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "And of Italy?"},
    ]
    m = create(sdk, system="Be terse.", messages=messages)
    assert m.stop_reason == "end_turn"
    prompt = engine.prompts[-1]
    assert prompt.startswith("<|im_start|>system\nBe terse.\n\nAnswer in French.<|im_end|>")
    assert prompt.count("<|im_start|>system") == 1


def test_cache_control_is_accepted_everywhere(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    ephemeral: Any = {"type": "ephemeral"}
    m = create(
        sdk,
        system=[{"type": "text", "text": "Be terse.", "cache_control": ephemeral}],
        tools=[{**WEATHER, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Capital?", "cache_control": ephemeral}]}],
        extra_body={"cache_control": ephemeral},
    )
    assert m.stop_reason == "end_turn"
    assert "cache_control" not in engine.prompts[-1] and "ephemeral" not in engine.prompts[-1]


def test_claude_codes_billing_header_is_left_out_of_the_prompt(
    sdk: anthropic.Anthropic, engine: RecordingEngine
) -> None:
    system: Any = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli; cch=1a2b3;"},
        {"type": "text", "text": "You are a coding agent."},
    ]
    create(sdk, system=system, messages=[USER])
    assert "billing" not in engine.prompts[-1] and "You are a coding agent." in engine.prompts[-1]


def test_anthropic_headers_and_the_beta_query_are_accepted(client: TestClient) -> None:
    headers = {
        "anthropic-version": "2099-01-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,no-such-beta-2031-01-01",
        "x-app": "cli",
    }
    body = {"model": MODEL, "max_tokens": 8, "messages": [USER]}
    r = client.post("/v1/messages?beta=true", json=body, headers=headers)
    assert r.status_code == 200 and r.json()["type"] == "message"
    r = client.post("/v1/messages/count_tokens?beta=true", json={"model": MODEL, "messages": [USER]}, headers=headers)
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_accepted_fields_that_change_nothing_here(sdk: anthropic.Anthropic) -> None:
    m = create(
        sdk,
        messages=[USER],
        metadata={"user_id": "agent-7"},
        service_tier="auto",
        thinking={"type": "disabled"},
        extra_body={"context_management": {"edits": []}, "output_config": {"effort": "low"}},
    )
    assert m.stop_reason == "end_turn"


# ---- tools ------------------------------------------------------------------------------------


def test_tool_round_trip(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    ask: Any = {"role": "user", "content": "What is the weather in Paris?"}
    m = create(sdk, messages=[ask], tools=[WEATHER], tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    [call] = m.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id.startswith("toolu_")
    assert engine.params[-1].grammar is not None  # "any" forces a call with a grammar
    result: Any = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]}
    answer = create(sdk, messages=[ask, m.to_param(), result], tools=[WEATHER])
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    assert 'get_weather({"city": "Paris"}) returned: Sunny' in engine.prompts[-1]


def test_a_streamed_tool_call_arrives_as_input_json_deltas(sdk: anthropic.Anthropic, client: TestClient) -> None:
    ask: Any = {"role": "user", "content": "What is the weather in Paris?"}
    with sdk.messages.stream(model=MODEL, max_tokens=64, messages=[ask], tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.input == {"city": "Paris"}
    fragments = [
        e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"city": "Paris"}
    # The same call, forced: the grammar's output streams as it is written.
    with sdk.messages.stream(
        model=MODEL, max_tokens=64, messages=[ask], tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    ) as stream:
        forced = stream.get_final_message()
    assert forced.stop_reason == "tool_use" and forced.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_several_tool_calls_and_disable_parallel_tool_use(sdk: anthropic.Anthropic) -> None:
    ask: Any = {"role": "user", "content": "TWO CALLS please"}
    m = create(sdk, messages=[ask], tools=[WEATHER, TIME], max_tokens=256)
    assert [(b.type, b.name) for b in m.content] == [("tool_use", "get_weather"), ("tool_use", "get_time")]  # type: ignore[union-attr]
    assert len({b.id for b in m.content}) == 2  # type: ignore[union-attr]
    with sdk.messages.stream(model=MODEL, max_tokens=256, messages=[ask], tools=[WEATHER, TIME]) as s:
        streamed = s.get_final_message()
    assert [b.input for b in streamed.content] == [{"city": "Paris"}, {"zone": "CET"}]  # type: ignore[union-attr]
    one = create(
        sdk,
        messages=[ask],
        tools=[WEATHER, TIME],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        max_tokens=256,
    )
    assert [b.name for b in one.content] == ["get_weather"]  # type: ignore[union-attr]


def test_tool_choice_none_hides_the_tools(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    m = create(sdk, messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER], tool_choice={"type": "none"})
    assert m.stop_reason == "end_turn" and "get_weather" not in engine.prompts[-1]


def test_tool_results_with_blocks_errors_and_several_calls_in_one_turn(
    sdk: anthropic.Anthropic, engine: RecordingEngine
) -> None:
    calls: Any = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {"zone": "CET"}},
        ],
    }
    results: Any = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "Sunny"}]},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_02",
                "content": [{"type": "text", "text": "clock offline"}],
                "is_error": True,
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Summarise."},
        ],
    }
    m = create(sdk, messages=[{"role": "user", "content": "weather and time?"}, calls, results], tools=[WEATHER, TIME])
    assert m.stop_reason == "end_turn"
    prompt = engine.prompts[-1]
    assert 'get_weather({"city": "Paris"}) returned: Sunny' in prompt
    assert 'get_time({"zone": "CET"}) returned: Error: clock offline' in prompt
    # The results come before the rest of their user turn, as the calls were answered first.
    assert prompt.index("returned: Sunny") < prompt.index("Summarise.")
    assert "Let me look." in prompt


def test_thinking_blocks_of_earlier_turns_are_dropped(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    earlier: Any = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "SECRET PLAN", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Paris."},
        ],
    }
    m = create(sdk, messages=[USER, earlier, {"role": "user", "content": "Sure?"}])
    assert m.stop_reason == "end_turn"
    assert "SECRET PLAN" not in engine.prompts[-1] and "opaque" not in engine.prompts[-1]
    assert "Paris." in engine.prompts[-1]


def test_output_config_format_holds_the_reply_to_a_schema(sdk: anthropic.Anthropic, engine: RecordingEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt: Any = {"format": {"type": "json_schema", "schema": schema}}
    create(sdk, messages=[USER], extra_body={"output_config": fmt})
    grammar = engine.params[-1].grammar
    assert grammar is not None and "city" in grammar  # the schema became the sampling grammar
    with pytest.raises(anthropic.BadRequestError) as err:  # not together with a forced tool call
        create(sdk, messages=[USER], tools=[WEATHER], tool_choice={"type": "any"}, extra_body={"output_config": fmt})
    assert "output_config.format" in err.value.message
    unenforceable: Any = {"format": {"type": "json_schema", "schema": {"type": "string", "pattern": "^a+$"}}}
    with pytest.raises(anthropic.BadRequestError) as err:
        create(sdk, messages=[USER], extra_body={"output_config": unenforceable})
    assert "pattern" in err.value.message


def test_a_final_assistant_turn_is_a_prefill_the_reply_continues(
    sdk: anthropic.Anthropic, engine: RecordingEngine
) -> None:
    prefill = {"role": "assistant", "content": "The capital is"}
    m = create(sdk, messages=[USER, prefill])
    assert engine.prompts[-1].endswith("<|im_start|>assistant\nThe capital is")  # left open, not answered
    assert m.content[0].text == "Paris is the capital of France."  # the continuation only, as Anthropic returns
    counted = sdk.messages.count_tokens(model=MODEL, messages=[USER, prefill]).input_tokens  # type: ignore[list-item]
    assert counted == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
