"""The tiny Llama-3-vocabulary GGUF through the real llama.cpp engine and the whole server.

Its weights are random, so what it says is noise; what is tested is the plumbing a real
Llama 3.1 Instruct model relies on: special tokens, template detection, BOS, stop tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.api.state import AppState
from server.engine.llama.engine import LlamaEngine
from server.prompting.chat_template import Llama31Template
from server.settings import Settings
from tests.fixtures.tiny_llama3 import SPECIAL_TOKENS, token_id

pytestmark = pytest.mark.model

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def engine(tiny_llama3_gguf: Path) -> Iterator[LlamaEngine]:
    e = LlamaEngine(str(tiny_llama3_gguf), model_id="tiny-llama3", n_slots=2, n_ctx_per_seq=2048, n_batch=256)
    yield e
    e.close()


@pytest.fixture(scope="module")
def client(engine: LlamaEngine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_queue=4), engine=engine)) as c:
        yield c


@pytest.fixture(scope="module")
def sdk(client: TestClient) -> Any:  # Any: plain dicts where the SDK wants TypedDicts
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def test_special_tokens_are_single_tokens(engine: LlamaEngine) -> None:
    for text in SPECIAL_TOKENS:
        assert engine.tokenize(text, add_special=False, parse_special=True) == [token_id(text)], text
    header = engine.tokenize(
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", add_special=False, parse_special=True
    )
    assert header[0] == token_id("<|start_header_id|>")
    assert token_id("<|end_header_id|>") in header and header[-1] == token_id("<|eot_id|>")
    # Without parse_special the same text is plain bytes: user text cannot forge a header.
    assert token_id("<|start_header_id|>") not in engine.tokenize(
        "<|start_header_id|>", add_special=False, parse_special=False
    )


def test_stop_tokens_are_end_of_generation(engine: LlamaEngine) -> None:
    for text in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"):
        assert token_id(text) in engine.info.eog_tokens, text
    assert token_id("<|python_tag|>") not in engine.info.eog_tokens


def test_server_detects_llama31_and_uses_the_native_builder(client: TestClient) -> None:
    state: AppState = client.app.state.llamaserve  # type: ignore[attr-defined]
    loaded = state.registry.loaded()
    assert loaded is not None
    assert isinstance(loaded.chat.template, Llama31Template)
    prompt = client.post("/apply-template", json={"messages": MESSAGES}).json()["prompt"]
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:")
    assert prompt.endswith("Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip


def test_prompt_carries_exactly_one_bos(client: TestClient, engine: LlamaEngine) -> None:
    state: AppState = client.app.state.llamaserve  # type: ignore[attr-defined]
    loaded = state.registry.loaded()
    assert loaded is not None
    prompt = client.post("/apply-template", json={"messages": MESSAGES}).json()["prompt"]
    tokens = loaded.chat.tokenize_prompt(prompt)
    bos = token_id("<|begin_of_text|>")
    assert tokens[0] == bos and tokens.count(bos) == 1
    assert tokens[1] == token_id("<|start_header_id|>")


@pytest.mark.parametrize("stop", ["<|eot_id|>", "<|eom_id|>"])
def test_generation_stops_on_turn_end_tokens(sdk: Any, stop: str) -> None:
    r = sdk.chat.completions.create(
        model="tiny-llama3",
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        logit_bias={str(token_id(stop)): 100},
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ""
    # It stopped at the first token (which is counted or not, by convention), not after 20.
    assert r.usage is not None and r.usage.completion_tokens <= 1


def test_without_the_bias_it_runs_to_the_limit(sdk: Any) -> None:
    # The control for the test above: the random model does not stop by itself in 5 tokens.
    bias = {str(token_id(t)): -100 for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")}
    r = sdk.chat.completions.create(
        model="tiny-llama3",
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        logit_bias=bias,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_template_is_detected_from_vocabulary_when_metadata_has_none(tmp_path: Path) -> None:
    from tests.fixtures.tiny_llama3 import write_tiny_llama3

    path = write_tiny_llama3(tmp_path / "no-template.gguf", with_template=False)
    e = LlamaEngine(str(path), model_id="bare", n_slots=1, n_ctx_per_seq=256, n_batch=64)
    try:
        assert e.info.chat_template is None
        with TestClient(create_app(Settings(), engine=e)) as c:
            prompt = c.post("/apply-template", json={"messages": MESSAGES}).json()["prompt"]
        assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    finally:
        e.close()


def test_required_tool_call_through_llama3_format_and_grammar(sdk: Any, client: TestClient) -> None:
    # Random weights: only the grammar makes this a call, in Llama 3.1's "parameters" format.
    tool: Any = {
        "type": "function",
        "function": {
            "name": "pick_city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    prompt = client.post("/apply-template", json={"messages": MESSAGES, "tools": [tool]}).json()["prompt"]
    assert "Environment: ipython\n" in prompt and '"name": "pick_city"' in prompt
    # Whitespace (bytes 9, 10, 32 are tokens 9, 10, 32) is biased away, or the noise fills every
    # place the grammar allows some.
    no_ws = {str(t): -100.0 for t in (9, 10, 32)}
    r = sdk.chat.completions.create(
        model="tiny-llama3",
        messages=MESSAGES,
        tools=[tool],
        tool_choice="required",
        temperature=0,
        max_tokens=120,
        logit_bias=no_ws,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "pick_city"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
