"""OpenAI's Responses API end to end on the real llama.cpp engine and the bundled SmolLM2, through the
official ``openai`` SDK against a live server; every body and stream event is validated against
OpenAI's spec as it arrives (the ``spec_hook`` of tests/api/conftest.py).

Greedy decoding (``temperature`` 0) keeps the runs reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel

from server.api.app import create_app
from server.engine.llama.engine import LlamaEngine
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.helpers.live import live_server
from tests.spec.openapi import load_spec

pytestmark = pytest.mark.model

MODEL = "smollm2"
SYSTEM = "You are a helpful assistant."
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": PARAMS,
}


@pytest.fixture(scope="module")
def checked() -> list[str]:
    return []


@pytest.fixture(scope="module")
def sdk(smollm2_path: str, checked: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    engine = LlamaEngine(smollm2_path, model_id=MODEL, n_slots=2, n_ctx_per_seq=2048, n_batch=256)
    state = tmp_path_factory.mktemp("state")
    try:
        with live_server(create_app(Settings(max_queue=8, state_dir=str(state)), engine=engine)) as url:
            http = httpx.Client(event_hooks={"response": [spec_hook(load_spec(), checked)]}, timeout=120)
            yield OpenAI(base_url=f"{url}/v1", api_key="sk-local", http_client=http, max_retries=0)
            http.close()
    finally:
        engine.close()


def create(sdk: OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("max_output_tokens", 48)
    return sdk.responses.create(model=MODEL, temperature=0, **kwargs)


def test_create_retrieve_input_items_delete(sdk: OpenAI, checked: list[str]) -> None:
    r = create(sdk, input="What is the capital of France?", instructions=SYSTEM)
    assert r.status in ("completed", "incomplete") and "paris" in r.output_text.lower()
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert sdk.responses.retrieve(r.id).output_text == r.output_text
    [item] = list(sdk.responses.input_items.list(r.id))
    assert item.type == "message" and item.content[0].text == "What is the capital of France?"  # type: ignore[union-attr]
    sdk.responses.delete(r.id)
    assert "Response" in checked and "ResponseItemList" in checked


def test_stream_matches_create(sdk: OpenAI, checked: list[str]) -> None:
    created = create(sdk, input="Count to five.", instructions=SYSTEM)
    with sdk.responses.stream(
        model=MODEL, input="Count to five.", instructions=SYSTEM, temperature=0, max_output_tokens=48
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == created.output_text
    assert final.usage is not None and final.usage.output_tokens == created.usage.output_tokens
    assert "ResponseStreamEvent" in checked


def test_a_chain_of_three_turns_is_mostly_cached(sdk: OpenAI) -> None:
    r1 = create(sdk, input="My name is Ada. Say hi.", instructions=SYSTEM)
    r2 = create(sdk, input="What is my name?", previous_response_id=r1.id, instructions=SYSTEM)
    r3 = create(sdk, input="Spell my name backwards.", previous_response_id=r2.id, instructions=SYSTEM)
    for earlier, later in ((r1, r2), (r2, r3)):
        # The later prompt holds the earlier one's input and its reply (a 135M model may not use them).
        assert later.usage.input_tokens > earlier.usage.input_tokens + earlier.usage.output_tokens
        cached = later.usage.input_tokens_details.cached_tokens
        # Everything the earlier turn's prompt held is a prefix of the later one.
        assert cached >= earlier.usage.input_tokens, (cached, earlier.usage, later.usage)
        assert cached > later.usage.input_tokens / 2
    assert [i.id for i in sdk.responses.input_items.list(r3.id)] != []


def test_max_output_tokens_gives_incomplete(sdk: OpenAI) -> None:
    r = create(sdk, input="Tell me a long story about a dragon.", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"


class City(BaseModel):
    name: str
    country: str


def test_parse_gives_the_schema(sdk: OpenAI) -> None:
    r = sdk.responses.parse(
        model=MODEL,
        input="Name a big city in France, as JSON.",
        instructions=SYSTEM,
        text_format=City,
        temperature=0,
        max_output_tokens=60,
    )
    assert isinstance(r.output_parsed, City) and r.output_parsed.name


def test_a_function_tool_round_trip(sdk: OpenAI, tmp_path: Path) -> None:
    ask = "What's the weather like in Paris today?"
    r = create(sdk, input=ask, tools=[WEATHER], tool_choice="required", max_output_tokens=60)
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    args = json.loads(call.arguments)
    jsonschema.validate(args, PARAMS)
    assert "paris" in args["city"].lower()
    with sdk.responses.stream(
        model=MODEL, input=ask, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=60
    ) as stream:
        streamed = stream.get_final_response()
    assert streamed.output[0].arguments == call.arguments  # type: ignore[union-attr]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 21})}
    answer = create(sdk, input=[result], previous_response_id=r.id, tools=[WEATHER], max_output_tokens=40)
    assert [i.type for i in answer.output] == ["message"]
    assert "21" in answer.output_text  # it used the tool's result
