"""Tool calling through the HTTP API and the real openai SDK, on the scripted fake engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from server.api.app import create_app
from server.engine.base import SamplingParams
from server.engine.fake import BOS, FakeEngine
from server.settings import Settings
from tests.fixtures.tiny_llama3 import OFFICIAL_TEMPLATE
from tests.unit.test_llama3 import official

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME: dict[str, Any] = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


class RecordingEngine(FakeEngine):
    """The fake engine, remembering each sequence's sampling params and prompt."""

    def __init__(self, reply: Callable[[str], str], **kwargs: Any) -> None:
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

        def record(prompt: str) -> str:
            self.prompts.append(prompt)
            return reply(prompt)

        super().__init__(reply=record, **kwargs)

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        self.params.append(params)
        return super().begin(slot, prompt, params)


# The SDK client is typed Any: these tests pass plain dicts where the SDK wants its TypedDicts.
Served = tuple[Any, TestClient, "RecordingEngine"]


def make_client(reply: Callable[[str], str], **settings: Any) -> Iterator[Served]:
    engine = RecordingEngine(reply, n_slots=2, n_ctx_per_seq=4096, **settings.pop("engine", {}))
    app = create_app(Settings(max_queue=4, **settings), engine=engine)
    with TestClient(app) as client:
        sdk = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
        yield sdk, client, engine


def calls_weather(prompt: str) -> str:
    # A model that calls the tool when it is offered one, and answers once it has the result.
    if 'get_weather({"city": "Paris"}) returned:' in prompt:
        return "It is 21 degrees and sunny in Paris."
    return CALL if "You can call these tools" in prompt else "I cannot check the weather."


@pytest.fixture
def weather() -> Iterator[Served]:
    yield from make_client(calls_weather)


def test_auto_tool_call_becomes_openai_tool_calls(weather: Served) -> None:
    sdk, _, engine = weather
    r = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert engine.params[-1].grammar is None  # auto: the model may also just talk


def test_required_sends_a_grammar_that_forces_a_declared_call(
    weather: Served,
) -> None:
    sdk, _, engine = weather
    r = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER, TIME], tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    grammar = engine.params[-1].grammar or ""
    assert "root ::=" in grammar and "get_weather" in grammar and "get_time" in grammar
    named = {"type": "function", "function": {"name": "get_weather"}}
    sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER, TIME], tool_choice=named)
    grammar = engine.params[-1].grammar or ""
    assert "get_weather" in grammar and "get_time" not in grammar
    assert 'You must call the tool "get_weather"' in engine.prompts[-1]


def test_tool_choice_none_keeps_tools_out_and_text_as_content() -> None:
    for sdk, _, engine in make_client(lambda p: CALL):
        r = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER], tool_choice="none")
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == CALL
        assert r.choices[0].message.tool_calls is None
        assert "get_weather" not in engine.prompts[-1]


def test_call_to_an_undeclared_function_stays_content() -> None:
    text = '{"name": "delete_all_files", "arguments": {}}'
    for sdk, _, _ in make_client(lambda p: text):
        r = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER])
        assert r.choices[0].message.content == text
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason == "stop"


def test_parallel_calls_and_parallel_tool_calls_false() -> None:
    two = CALL + '\n{"name": "get_time", "arguments": {}}'
    for sdk, _, _ in make_client(lambda p: two):
        r = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER, TIME])
        calls = r.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]
        assert len({c.id for c in calls}) == 2
        r = sdk.chat.completions.create(
            model="fake-model",
            messages=ASK,
            tools=[WEATHER, TIME],
            parallel_tool_calls=False,
        )
        assert [c.function.name for c in r.choices[0].message.tool_calls or []] == ["get_weather"]


def test_streaming_tool_call_reassembles_into_the_same_call(
    weather: Served,
) -> None:
    sdk, _, _ = weather
    plain = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER])
    stream = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER], stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    content = ""
    fragments = 0
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                if d.id:
                    assert not slot["id"], "the id comes once, in the call's first delta"
                    slot["id"] = d.id
                if d.function and d.function.name:
                    slot["name"] += d.function.name
                if d.function and d.function.arguments:
                    slot["arguments"] += d.function.arguments
                    fragments += 1
            finish = ch.finish_reason or finish
    (expected,) = plain.choices[0].message.tool_calls or []
    assert content == ""
    assert finish == "tool_calls"
    assert calls[0]["id"].startswith("call_")
    assert (calls[0]["name"], calls[0]["arguments"]) == (expected.function.name, expected.function.arguments)
    assert fragments > 1


def test_streamed_forced_call_arrives_token_by_token(weather: Served) -> None:
    sdk, _, _ = weather
    plain = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER], tool_choice="required")
    chunks = list(
        sdk.chat.completions.create(
            model="fake-model", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True
        )
    )
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.id is None for d in deltas[1:])
    # The fake engine emits a byte per token: the arguments arrive in many small fragments.
    assert len(deltas) > len('{"city": "Paris"}') // 2
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == plain.choices[0].message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_sdk_stream_helper_accumulates_the_call(weather: Served) -> None:
    sdk, _, _ = weather
    with sdk.chat.completions.stream(model="fake-model", messages=ASK, tools=[WEATHER]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.parsed_arguments == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_streaming_text_with_tools_streams_as_content() -> None:
    for sdk, _, _ in make_client(lambda p: "Hello there, no tools needed."):
        chunks = list(sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER], stream=True))
        text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
        assert text == "Hello there, no tools needed."
        assert sum(1 for c in chunks for ch in c.choices if ch.delta.content) > 3  # token by token, not held
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_result_round_trip_renders_and_answers(weather: Served) -> None:
    sdk, client, engine = weather
    first = sdk.chat.completions.create(model="fake-model", messages=ASK, tools=[WEATHER])
    (call,) = first.choices[0].message.tool_calls or []
    history: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'},
    ]
    answer = sdk.chat.completions.create(model="fake-model", messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == "It is 21 degrees and sunny in Paris."
    assert answer.choices[0].finish_reason == "stop"
    prompt = client.post("/apply-template", json={"messages": history, "tools": [WEATHER]}).json()["prompt"]
    # The generic format folds the exchange into the user turn as context (see server/prompting/tools.py).
    assert prompt.endswith(
        "<|im_start|>user\nWhat's the weather in Paris?\n\n"
        '[get_weather({"city": "Paris"}) returned: {"temp_c": 21, "sky": "sunny"}]<|im_end|>\n<|im_start|>assistant\n'
    )
    assert prompt == engine.prompts[-1]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_openai_400s(weather: Served, body: dict[str, Any], param: str) -> None:
    _, client, _ = weather
    r = client.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == param


def test_sdk_raises_bad_request_for_unknown_forced_function(
    weather: Served,
) -> None:
    sdk, _, _ = weather
    with pytest.raises(BadRequestError):
        sdk.chat.completions.create(
            model="fake-model",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "missing"}},
        )


# ---- /apply-template --------------------------------------------------------------------------


def test_apply_template_returns_the_prompt_the_model_sees(weather: Served) -> None:
    sdk, client, engine = weather
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    prompt = client.post("/apply-template", json=body).json()["prompt"]
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    sdk.chat.completions.create(model="fake-model", messages=body["messages"])
    assert engine.prompts[-1] == prompt


def test_apply_template_with_llama31_override_matches_the_official_template() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris? 🌦"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    for _, client, _ in make_client(calls_weather, chat_template="llama-3.1"):
        r = client.post("/apply-template", json={"messages": messages, "tools": [WEATHER]})
        assert r.status_code == 200
        prompt = r.json()["prompt"]
        date = prompt.split("Today Date: ", 1)[1].split("\n", 1)[0]
        normalised: list[dict[str, Any]] = [
            messages[0],
            messages[1],
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": '{"temp_c": 21}'},
        ]
        expected = official(normalised, [WEATHER]).replace("Today Date: 26 Nov 2026", f"Today Date: {date}")
        # The fake vocabulary's BOS has no text, so (as {{ bos_token }} would) the text starts
        # after it and the tokenizer adds it: exactly one BOS either way.
        assert prompt == expected.removeprefix("<|begin_of_text|>")
        assert prompt.startswith("<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n")
        tokens = client.app.state.llamaserve.registry.loaded().chat.tokenize_prompt(prompt)
        assert tokens[0] == BOS and tokens.count(BOS) == 1


def test_apply_template_errors_are_400s(weather: Served) -> None:
    _, client, _ = weather
    assert client.post("/apply-template", json={"messages": []}).status_code == 400
    r = client.post("/apply-template", json={"messages": ASK, "tools": [WEATHER], "tool_choice": "bogus"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_official_template_in_gguf_metadata_selects_native_builder() -> None:
    for _, client, _ in make_client(calls_weather, engine={"chat_template": OFFICIAL_TEMPLATE}):
        prompt = client.post("/apply-template", json={"messages": ASK}).json()["prompt"]
        assert prompt.startswith("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
