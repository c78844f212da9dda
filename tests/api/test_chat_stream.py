"""Chat streaming exactly as OpenAI streams: role chunk, content, one finish chunk per choice, [DONE]."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.engine.fake import FakeEngine
from tests.api.conftest import STRICT
from tests.spec.openapi import sse_events

MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]
REPLY = "Paris is the capital of France."


def stream_chunks(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    with client.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True, **body}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == (None, "[DONE]")
    return [json.loads(data) for _, data in events[:-1]]


def test_stream_order_for_n_choices(client: TestClient, spec_checks: list[str]) -> None:
    chunks = stream_chunks(client, n=2)
    assert spec_checks.count("CreateChatCompletionStreamResponse") == len(chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(ch["delta"].get("content", "") for ch in mine) == REPLY
        finishes = [ch for ch in mine if ch["finish_reason"] is not None]
        assert len(finishes) == 1 and finishes[0] is mine[-1]
        assert finishes[0]["delta"] == {} and finishes[0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_usage_chunk_only_when_asked_counts_every_choice(client: TestClient) -> None:
    chunks = stream_chunks(client, n=2, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 2 * len(REPLY)
    assert all(c["usage"] is None for c in chunks[:-1])
    chunks = stream_chunks(client, stream_options={"include_usage": False})
    assert all("usage" not in c for c in chunks)


def test_stream_logprobs_ride_with_their_tokens(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, logprobs=True, top_logprobs=1, max_tokens=5
    )
    entries = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                entries += choice.logprobs.content
    assert "".join(e.token for e in entries) == "Paris"
    assert all(len(e.top_logprobs) == 1 for e in entries)


def test_stream_stop_string_never_shows(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True, stop=["capital of"])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Paris is the "


def test_error_after_the_stream_started_raises_in_the_sdk(sdk: OpenAI, engine: FakeEngine) -> None:
    engine.fail_next_step = True
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "engine failed" in err.value.message


def test_error_event_is_in_openai_error_shape(client: TestClient, engine: FakeEngine, spec_checks: list[str]) -> None:
    engine.fail_next_step = True
    with client.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[0][0] is None and json.loads(events[0][1])["choices"][0]["delta"]["role"] == "assistant"
    event, data = events[-1]
    assert event == "error"
    assert json.loads(data)["error"]["type"] == "server_error"
    assert "ErrorResponse" in spec_checks


@pytest.mark.parametrize("settings", [STRICT], ids=["strict-model-name"])
def test_refusals_before_the_stream_are_plain_http_errors(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True, "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
