"""``stream_options: {"include_progress": true}``: prefill progress as SSE comments, invisible to OpenAI clients."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.engine.fake import FakeEngine
from tests.spec.openapi import sse_events

LONG = "Tell me about this text. " + "lorem ipsum dolor sit amet " * 40  # ~1100 bytes: ~18 chunks of 64
REPLY = "Paris is the capital of France."


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda prompt: REPLY, n_slots=2, n_ctx_per_seq=4096, n_batch=64)


def stream_text(client: TestClient, path: str, body: dict[str, Any]) -> str:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return r.read().decode()


def comments(text: str, kind: str) -> list[dict[str, Any]]:
    prefix = f": {kind} "
    return [json.loads(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]


def first_content_offset(text: str) -> int:
    return text.index('"content":"P')  # the first piece of the reply


def test_chat_stream_reports_prefill_before_the_first_token(client: TestClient, spec_checks: list[str]) -> None:
    options = {"include_progress": True, "include_usage": True}
    body = {"messages": [{"role": "user", "content": LONG}], "stream_options": options}
    text = stream_text(client, "/v1/chat/completions", body)
    progress = comments(text, "progress")
    assert len(progress) >= 10
    done = [p["processed"] for p in progress]
    assert done == sorted(set(done)) and done[0] == 0
    usage = json.loads(sse_events(text)[-2][1])["usage"]
    assert progress[-1]["processed"] == progress[-1]["total"] == usage["prompt_tokens"]
    assert all(p["index"] == 0 and p["cached"] == 0 and p["time_ms"] >= 0 for p in progress)
    assert text.rindex(": progress ") < first_content_offset(text)
    # The data events are OpenAI's, unchanged: every chunk still validates against the spec.
    data = sse_events(text)
    assert data[-1] == (None, "[DONE]")
    assert spec_checks.count("CreateChatCompletionStreamResponse") == len(data) - 1


def test_completion_stream_reports_progress_too(client: TestClient) -> None:
    text = stream_text(
        client, "/v1/completions", {"prompt": LONG, "max_tokens": 5, "stream_options": {"include_progress": True}}
    )
    progress = comments(text, "progress")
    assert progress[-1]["processed"] == progress[-1]["total"] == len(LONG.encode()) + 1  # and the BOS
    assert len(progress) >= 10


def test_progress_is_off_by_default(client: TestClient) -> None:
    text = stream_text(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]})
    assert not [line for line in text.splitlines() if line.startswith(":")]
    text = stream_text(
        client,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONG}], "stream_options": {"include_progress": False}},
    )
    assert ": progress" not in text


def test_include_progress_needs_stream(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_progress": True}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_the_openai_sdk_streams_through_progress_comments(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": LONG}],
        stream=True,
        stream_options={"include_progress": True, "include_usage": True},  # type: ignore[typeddict-unknown-key]
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 1000
    completion = sdk.completions.create(
        model="fake-model",
        prompt=LONG,
        max_tokens=5,
        stream=True,
        stream_options={"include_progress": True},  # type: ignore[typeddict-unknown-key]
    )
    assert "".join(c.choices[0].text for c in completion if c.choices) == REPLY[:5]
