from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.api.conftest import STRICT

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion_through_the_sdk(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="fake-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Paris is the capital of France."
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.usage is not None
    assert r.usage.completion_tokens == len("Paris is the capital of France.")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_model_may_be_omitted_like_the_readme_curl(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].startswith("Paris")


def test_streaming_through_the_sdk_reassembles(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # Token by token, not one lump: the fake engine's tokens are bytes, so one chunk per character.
    assert pieces == list("Paris is the capital of France.")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_ends_with_done_and_usage_only_when_asked(client: TestClient) -> None:
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    reply = "Paris is the capital of France."  # the conftest engine's reply: one token per byte
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(reply)
    assert all(c["usage"] is None for c in chunks[:-1])

    with client.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}) as r:
        plain = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert all("usage" not in c for c in plain)


def test_max_tokens_gives_length(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Paris"
    assert r.choices[0].finish_reason == "length"


def test_stop_string_is_never_returned(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stop=["capital"])  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Paris is the "


@pytest.mark.parametrize("settings", [STRICT], ids=["strict-model-name"])
def test_unknown_model_is_404_model_not_found(sdk: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="gpt-9", messages=MESSAGES)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found"


def test_validation_errors_are_400_in_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "temperature": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "temperature" and err["type"] == "invalid_request_error"
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_unsupported_openai_field_is_refused_by_name(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "audio": {"voice": "alloy"}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "audio"


def test_prompt_longer_than_context_is_context_length_exceeded(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 600}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_route_and_method_are_openai_errors(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_models_list_and_retrieve(sdk: OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["fake-model"]
    assert sdk.models.retrieve("fake-model").id == "fake-model"


def test_health_is_ok_when_ready(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_ignore_eos_with_a_grammar_is_refused(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": MESSAGES, "ignore_eos": True, "grammar": 'root ::= "yes"'},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "ignore_eos"
