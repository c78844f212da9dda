"""The OpenAI surface on the real llama.cpp engine and the bundled SmolLM2, through the openai SDK.

n choices differ, json_schema output parses and validates, logprobs are real,
stop strings never leak, usage counts the real tokens, embeddings mean something.
Every response is also validated against OpenAI's spec (the same hook as tests/api).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.llama.engine import LlamaEngine
from server.protocol import ChatMessage
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.spec.openapi import load_spec

pytestmark = pytest.mark.model

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
MESSAGES: Any = [SYSTEM, QUESTION]


@pytest.fixture(scope="module")
def client(smollm2_path: str) -> Iterator[TestClient]:
    engine = LlamaEngine(smollm2_path, model_id="smollm2", n_slots=4, n_ctx_per_seq=1024, n_batch=256)
    try:
        with TestClient(create_app(Settings(max_queue=16), engine=engine)) as c:
            c.event_hooks["response"].append(spec_hook(load_spec(), []))
            yield c
    finally:
        engine.close()


@pytest.fixture(scope="module")
def sdk(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def chat(sdk: OpenAI, **kwargs: Any) -> Any:
    return sdk.chat.completions.create(model="smollm2", messages=kwargs.pop("messages", MESSAGES), **kwargs)


def test_n_choices_differ_at_temperature_one(sdk: OpenAI) -> None:
    r = chat(sdk, n=3, temperature=1, seed=11, max_tokens=16)
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3, texts
    assert r.usage is not None and r.usage.completion_tokens <= 3 * 16


def sdk_tokens(sdk: OpenAI, text: str) -> list[int]:
    client: Any = sdk._client
    return list(client.post("/tokenize", json={"content": text}).json()["tokens"])


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "confidence": {"type": "integer"}},
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}},
        "required": ["colors"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "pet": {"$ref": "#/$defs/pet"},
        },
        "required": ["name", "age", "pet"],
        "additionalProperties": False,
        "$defs": {
            "pet": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
                "required": ["kind", "legs"],
                "additionalProperties": False,
            }
        },
    },
    {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "score": {"type": "number"},
            "note": {"type": ["string", "null"], "maxLength": 12},
        },
        "required": ["ok", "score", "note"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["city", "enum", "array", "ref-anyof", "bool-number-null"])
def test_json_schema_output_parses_and_validates(sdk: OpenAI, schema: dict[str, Any]) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    r = chat(
        sdk,
        messages=[SYSTEM, {"role": "user", "content": "Answer in JSON about Paris, France."}],
        response_format=fmt,
        temperature=0.7,
        seed=3,
        max_tokens=200,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    value = json.loads(choice.message.content or "")
    jsonschema.validate(value, schema)


def test_json_object_output_is_an_object(sdk: OpenAI) -> None:
    r = chat(sdk, response_format={"type": "json_object"}, temperature=0, max_tokens=120)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: still the start of an object
        assert (r.choices[0].message.content or "").lstrip().startswith("{")


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"response_format": {"type": "json_object", "schema": CITY}}, "/chat/completions"),
        ({"json_schema": CITY}, "/chat/completions"),
        ({"json_schema": CITY}, "/completions"),
    ],
    ids=["json_object-schema", "json_schema-chat", "json_schema-completions"],
)
def test_llama_server_json_extensions_hold_output_to_the_schema(
    client: TestClient, fields: dict[str, Any], path: str
) -> None:
    ask = "Answer in JSON: which city is the capital of France?"
    body: dict[str, Any] = {"messages": [SYSTEM, {"role": "user", "content": ask}]}
    if path == "/completions":
        body = {"prompt": ask + "\n"}
    r = client.post(path, json={**body, **fields, "temperature": 0.7, "seed": 5, "max_tokens": 60})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    assert choice["finish_reason"] == "stop", text
    jsonschema.validate(json.loads(text), CITY)


def test_logprobs_are_real_and_top1_is_sampled_at_temperature_zero(sdk: OpenAI) -> None:
    r = chat(sdk, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5)
    choice = r.choices[0]
    entries = choice.logprobs.content
    assert entries and r.usage is not None and len(entries) == r.usage.completion_tokens
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 5
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        alternatives = [t.logprob for t in e.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        assert sum(math.exp(lp) for lp in alternatives) <= 1.0 + 1e-6
    if choice.finish_reason == "length":
        assert "".join(e.token for e in entries) == choice.message.content


def test_stop_never_leaks(sdk: OpenAI) -> None:
    free = chat(sdk, temperature=0, max_tokens=24).choices[0].message.content or ""
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]
    cut = chat(sdk, temperature=0, max_tokens=24, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == free[: free.index(stop)]
    stream = chat(sdk, temperature=0, max_tokens=24, stop=[stop], stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == cut.message.content and stop not in streamed


def test_usage_counts_the_real_tokens(sdk: OpenAI, client: TestClient) -> None:
    service = client.app.state.llamaserve.registry.loaded().chat  # type: ignore[attr-defined]
    messages = [SYSTEM, {"role": "user", "content": "Name three colors."}]
    prompt = service.tokenize_prompt(service.render_prompt([ChatMessage.model_validate(m) for m in messages]))
    first = chat(sdk, messages=messages, temperature=0, max_tokens=8, logprobs=True)
    assert first.usage.prompt_tokens == len(prompt)
    assert first.usage.completion_tokens == len(first.choices[0].logprobs.content) == 8
    assert first.usage.total_tokens == len(prompt) + 8
    second = chat(sdk, messages=messages, temperature=0, max_tokens=8)
    # The same prompt again: every prompt token but the last comes from the KV cache.
    assert second.usage.prompt_tokens_details.cached_tokens == len(prompt) - 1


def test_logit_bias_forces_a_token(sdk: OpenAI) -> None:
    token = sdk_tokens(sdk, " banana")[0]
    client: Any = sdk._client
    piece = client.post("/detokenize", json={"tokens": [token]}).json()["content"]
    r = chat(sdk, temperature=0, max_tokens=3, logit_bias={str(token): 100})
    assert r.choices[0].message.content == piece * 3


def test_completions_echo_and_token_prompts(sdk: OpenAI) -> None:
    ids = sdk_tokens(sdk, "The capital of France is")
    r = sdk.completions.create(model="smollm2", prompt=ids, max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text.startswith("The capital of France is")
    assert r.usage is not None and r.usage.prompt_tokens == len(ids)
    lp = sdk.completions.create(model="smollm2", prompt="Hello", max_tokens=4, temperature=0, logprobs=3)
    assert lp.choices[0].logprobs is not None and len(lp.choices[0].logprobs.tokens or []) == 4


def test_completions_logprobs_go_beyond_openais_five(sdk: OpenAI) -> None:
    # The web UI's completion mode asks for ten alternatives per token (OpenAI stops at five).
    r = sdk.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=10
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None and len(lp.top_logprobs) == 4
    # Keyed by text, so two tokens that decode alike share one entry: more than five, at most ten.
    assert all(5 < len(alts) <= 10 for alts in lp.top_logprobs)
    assert lp.tokens is not None and lp.token_logprobs is not None
    for token, logprob, alts in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert alts[token] == pytest.approx(logprob)  # temperature 0: the sampled token is the top one
        assert max(alts.values()) == pytest.approx(logprob)


def test_embeddings_are_meaningful(sdk: OpenAI) -> None:
    r = sdk.embeddings.create(
        model="smollm2", input=["The cat sat on the mat.", "A cat was sitting on a mat.", "Gluon field theory."]
    )
    a, b, c = (d.embedding for d in r.data)
    assert len(a) == 576 and abs(sum(x * x for x in a) - 1) < 1e-3

    def dot(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert dot(a, b) > dot(a, c)
    floats = sdk.embeddings.create(model="smollm2", input="The cat sat on the mat.", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(a, abs=1e-5)


def test_tokenize_round_trip(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"content": "Hello, wörld!"}).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": tokens}).json()["content"] == "Hello, wörld!"


def test_n_choices_compute_the_prompt_once(sdk: OpenAI, client: TestClient) -> None:
    engine = client.app.state.llamaserve.registry.loaded().engine  # type: ignore[attr-defined]
    before = engine.prefilled_tokens
    question = {"role": "user", "content": "Write one line about the number 7311."}
    r = chat(sdk, messages=[SYSTEM, question], n=3, temperature=0, max_tokens=6)
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    fresh = r.usage.prompt_tokens - (r.usage.prompt_tokens_details.cached_tokens or 0)
    # One prefill for the three choices; the other two share its KV cells.
    assert engine.prefilled_tokens - before == fresh
    # Greedy choices from the very same logits are the same text.
    assert len({c.message.content for c in r.choices}) == 1
    # Streamed, the usage chunk tells the same truth whichever choice finishes first.
    before = engine.prefilled_tokens
    question = {"role": "user", "content": "Write one line about the number 9427."}
    stream = chat(
        sdk, messages=[SYSTEM, question], n=3, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    usages = [c.usage for c in stream if c.usage is not None]
    assert len(usages) == 1
    usage = usages[0]
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    assert engine.prefilled_tokens - before == usage.prompt_tokens - (cached or 0)


def test_a_follower_takes_over_when_the_leader_leaves(smollm2_path: str) -> None:
    from server.engine.base import SamplingParams

    engine = LlamaEngine(smollm2_path, model_id="m", n_slots=3, n_ctx_per_seq=256, n_batch=8)
    try:
        prompt = engine.tokenize(
            "The quick brown fox jumps over the lazy dog. " * 3, add_special=True, parse_special=False
        )
        assert len(prompt) > 16  # several prefill steps of 8
        greedy = SamplingParams(temperature=0)
        assert engine.begin(0, prompt, greedy) == 0
        assert engine.begin(1, prompt, greedy) == len(prompt)  # follows slot 0
        engine.begin(2, prompt, greedy)
        assert engine.step() == []  # slot 0's first chunk; the followers wait
        engine.release(0, keep_cache=False)
        outs = []
        for _ in range(20):
            outs += engine.step()
            if len(outs) >= 2:
                break
        assert sorted(o.slot for o in outs) == [1, 2]
        assert outs[0].token == outs[1].token
        assert engine.prefilled_tokens == 8 + len(prompt)  # the heir computed the prompt once for both
        # The token equals what a lone sequence samples for that prompt.
        engine.release(1)
        engine.release(2)
        engine.begin(0, prompt, greedy)
        solo = []
        for _ in range(20):
            solo += engine.step()
            if solo:
                break
        assert solo[0].token == outs[0].token
    finally:
        engine.close()
