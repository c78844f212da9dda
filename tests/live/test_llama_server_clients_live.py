"""A llama-server client's settings over a real socket: the openai SDK at a base_url without /v1, any
model name, a thinking model's reasoning streamed token by token, and a prefill continued."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

REPLY = "<think>\nEasy one.\n</think>\n\nParis."
USER = {"role": "user", "content": "Capital of France?"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engine = FakeEngine(reply=lambda prompt: REPLY, n_slots=2, step_delay=0.001)
    with live_server(create_app(Settings(cors_origins=["localhost"]), engine=engine)) as base:
        yield base


def test_the_sdk_without_v1_streams_reasoning_then_content_under_any_model_name(url: str) -> None:
    sdk = OpenAI(base_url=url, api_key="unused", max_retries=0)
    stream = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[USER], stream=True)  # type: ignore[list-item]
    kinds: list[str] = []
    models = set()
    for chunk in stream:
        models.add(chunk.model)
        for choice in chunk.choices:
            if (choice.delta.model_extra or {}).get("reasoning_content"):
                kinds.append("reasoning")
            elif choice.delta.content:
                kinds.append("content")
    assert models == {"fake-model"}
    # Token by token: several reasoning deltas, then several content deltas, never interleaved.
    assert kinds.count("reasoning") > 1 and kinds.count("content") > 1
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")


def test_a_prefill_is_continued_and_a_local_page_may_call(url: str) -> None:
    r = httpx.post(
        f"{url}/chat/completions",
        json={"messages": [USER, {"role": "assistant", "content": "It is"}], "model": "whatever"},
        headers={"Origin": "http://localhost:5173"},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert r.json()["choices"][0]["message"]["content"] == "Paris."
    pre = httpx.options(
        f"{url}/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert pre.status_code == 200 and "access-control-allow-origin" not in pre.headers
