"""Tool calling on the bundled SmolLM2 (ChatML, no tool syntax) through the real engine and the openai SDK.

SmolLM2's template knows no tools, so the server describes them in the system prompt and
asks for the generic ``{"name": ..., "arguments": {...}}`` call; ``tool_choice="required"``
is enforced with a grammar. Greedy decoding keeps the runs reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.llama.engine import LlamaEngine
from server.settings import Settings

pytestmark = pytest.mark.model

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
    "required": ["city"],
}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": PARAMS},
}
ASK: Any = [{"role": "user", "content": "What's the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def sdk(smollm2_path: str) -> Iterator[OpenAI]:
    engine = LlamaEngine(smollm2_path, model_id="smollm2", n_slots=1, n_ctx_per_seq=1024, n_batch=256)
    try:
        with TestClient(create_app(Settings(max_queue=4), engine=engine)) as client:
            yield OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def required_call(sdk: OpenAI) -> Any:
    return sdk.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=60
    )


def test_required_yields_a_valid_call(required_call: Any) -> None:
    choice = required_call.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PARAMS)
    assert "paris" in args["city"].lower()


def test_streamed_required_call_reassembles_into_the_same_call(sdk: OpenAI, required_call: Any) -> None:
    stream = sdk.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                assert d.index == 0
                name += (d.function.name or "") if d.function else ""
                arguments += (d.function.arguments or "") if d.function else ""
            finish = ch.finish_reason or finish
    (expected,) = required_call.choices[0].message.tool_calls
    assert (name, arguments) == (expected.function.name, expected.function.arguments)
    assert finish == "tool_calls"


def test_tool_result_round_trip_answers(sdk: OpenAI, required_call: Any) -> None:
    message = required_call.choices[0].message
    history = [
        *ASK,
        message.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": message.tool_calls[0].id,
            "content": json.dumps({"temp_c": 21, "sky": "sunny"}),
        },
    ]
    answer = sdk.chat.completions.create(
        model="smollm2", messages=history, tools=[WEATHER], temperature=0, max_tokens=40
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert "21" in choice.message.content  # it used the tool's result
