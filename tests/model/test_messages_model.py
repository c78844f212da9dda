"""Anthropic's Messages API end to end on the real llama.cpp engine and the bundled SmolLM2, through the
official ``anthropic`` SDK; every response and event is parsed strictly with the SDK's types.

Greedy decoding (``temperature`` 0, sent in the body as the SDK no longer has the parameter) keeps
the runs reproducible, so a stop sequence can be picked from the model's own unstopped reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.llama.engine import LlamaEngine
from server.settings import Settings
from tests.helpers.anthropic_wire import wire_hook

pytestmark = pytest.mark.model

MODEL = "smollm2"
GREEDY = {"temperature": 0}
ASK: Any = [{"role": "user", "content": "What is the capital of France?"}]
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
    "required": ["city"],
}
WEATHER: Any = {"name": "get_weather", "description": "Get the current weather in a city.", "input_schema": PARAMS}
WEATHER_ASK: Any = [{"role": "user", "content": "What's the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def checked() -> list[str]:
    return []


@pytest.fixture(scope="module")
def client(smollm2_path: str, checked: list[str]) -> Iterator[TestClient]:
    engine = LlamaEngine(smollm2_path, model_id=MODEL, n_slots=2, n_ctx_per_seq=1024, n_batch=256)
    try:
        with TestClient(create_app(Settings(max_queue=8), engine=engine)) as c:
            c.event_hooks["response"].append(wire_hook(checked))
            yield c
    finally:
        engine.close()


@pytest.fixture(scope="module")
def sdk(client: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://testserver", api_key="sk-local", http_client=client, max_retries=0)


def create(sdk: anthropic.Anthropic, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", ASK)
    return sdk.messages.create(model=MODEL, max_tokens=kwargs.pop("max_tokens", 48), extra_body=GREEDY, **kwargs)


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_create_answers(sdk: anthropic.Anthropic, checked: list[str]) -> None:
    m = create(sdk, system="You are a helpful assistant.")
    assert m.stop_reason in ("end_turn", "max_tokens") and "paris" in text_of(m).lower()
    assert m.usage.output_tokens > 0 and m.usage.input_tokens > 0
    assert "message" in checked


def test_stream_matches_create(sdk: anthropic.Anthropic) -> None:
    created = create(sdk)
    with sdk.messages.stream(model=MODEL, max_tokens=48, messages=ASK, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == text_of(created) == text_of(final)
    assert final.stop_reason == created.stop_reason
    assert final.usage.output_tokens == created.usage.output_tokens


def test_count_tokens_is_the_real_prompt_length(sdk: anthropic.Anthropic, client: TestClient) -> None:
    system = "You are a helpful assistant."
    counted = sdk.messages.count_tokens(model=MODEL, system=system, messages=ASK).input_tokens
    m = create(sdk, system=system, max_tokens=1)
    assert counted == m.usage.input_tokens + m.usage.cache_read_input_tokens
    # And independently: the chat template's prompt text, tokenized by the model's tokenizer.
    chat = {"model": MODEL, "messages": [{"role": "system", "content": system}, *ASK]}
    prompt = client.post("/apply-template", json=chat).json()["prompt"]
    tokens = client.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
    assert counted == len(tokens)


def test_max_tokens_gives_max_tokens(sdk: anthropic.Anthropic) -> None:
    m = create(sdk, max_tokens=3)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_stop_sequences_give_stop_sequence(sdk: anthropic.Anthropic) -> None:
    full = text_of(create(sdk))
    words = [w for w in full.split() if len(w) > 3]
    assert len(words) > 1, full
    stop = words[1]  # a word the greedy reply is known to reach
    m = create(sdk, stop_sequences=["\u2603never", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert stop not in text_of(m) and full.startswith(text_of(m))
    with sdk.messages.stream(model=MODEL, max_tokens=48, messages=ASK, stop_sequences=[stop], extra_body=GREEDY) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == stop


def test_tool_round_trip(sdk: anthropic.Anthropic, checked: list[str]) -> None:
    m = create(sdk, messages=WEATHER_ASK, tools=[WEATHER], tool_choice={"type": "any"}, max_tokens=60)
    assert m.stop_reason == "tool_use"
    [call] = m.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, PARAMS)
    assert "paris" in call.input["city"].lower()
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=WEATHER_ASK,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[0].input == call.input  # type: ignore[union-attr]
    result: Any = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": json.dumps({"temp_c": 21, "sky": "sunny"})}
        ],
    }
    answer = create(sdk, messages=[*WEATHER_ASK, m.to_param(), result], tools=[WEATHER], max_tokens=40)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in answer.content)
    assert "21" in text_of(answer)  # it used the tool's result
