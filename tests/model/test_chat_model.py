"""The whole server on the real llama.cpp engine and the bundled SmolLM2, through the openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from server.api.app import create_app
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.model

# SmolLM2's template adds its own system prompt when none is given, and with that prompt the
# 135M model rambles at temperature 0; with a plain system prompt it answers.
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(create_app(Settings(parallel=4, ctx_size=1024, max_queue=16))) as base:
        yield base


@pytest.fixture(scope="module")
def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_id(sdk: OpenAI) -> str:
    return sdk.models.list().data[0].id


def slots_busy(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["slots_busy"])


def test_known_answer_at_temperature_zero(sdk: OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(model=model_id, messages=[SYSTEM, QUESTION], temperature=0, max_tokens=20)  # type: ignore[list-item]
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_the_readme_request_without_model_or_options_answers(url: str) -> None:
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [QUESTION], "max_tokens": 16}, timeout=120)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].strip()


def test_same_seed_same_text_even_under_concurrent_load(url: str, model_id: str) -> None:
    async def run() -> list[str]:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        async def one(seed: int) -> str:
            r = await client.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                temperature=1.0,
                seed=seed,
                max_tokens=24,
            )
            return r.choices[0].message.content or ""

        alone = await one(1234)
        together = await asyncio.gather(one(1234), one(1234), one(99), one(1234))
        await client.close()
        return [alone, *together]

    alone, a, b, other, c = asyncio.run(run())
    assert alone == a == b == c
    assert other != alone  # a different seed really samples differently


def test_stop_string_is_not_returned(sdk: OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(
        model=model_id,
        messages=[SYSTEM, QUESTION],
        temperature=0,
        max_tokens=20,
        stop=["Paris"],  # type: ignore[list-item]
    )
    text = r.choices[0].message.content or ""
    assert "Paris" not in text and text.startswith("The capital of France is")
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_finishes_with_length(sdk: OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=5,  # type: ignore[list-item]
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_four_concurrent_streams_complete_with_text(url: str, model_id: str) -> None:
    topics = ["cats", "the moon", "bread", "rivers"]

    async def run() -> list[tuple[str, str | None]]:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        async def one(topic: str) -> tuple[str, str | None]:
            stream = await client.chat.completions.create(
                model=model_id,
                messages=[SYSTEM, {"role": "user", "content": f"Write two sentences about {topic}."}],  # type: ignore[list-item]
                max_tokens=40,
                stream=True,
            )
            text, reason = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    reason = chunk.choices[0].finish_reason or reason
            return text, reason

        out = await asyncio.gather(*(one(t) for t in topics))
        await client.close()
        return out

    results = asyncio.run(run())
    for text, reason in results:
        assert reason in ("stop", "length")
        assert len(text.split()) >= 3
    assert slots_busy(url) == 0


def test_disconnect_mid_stream_frees_the_slot(url: str, model_id: str) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "stream": True, "max_tokens": 900}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        seen = 0
        while seen < 3:
            if '"content":"' in next(lines):
                seen += 1
        assert slots_busy(url) == 1
    deadline = time.monotonic() + 10
    while slots_busy(url) != 0:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.02)
    r2 = httpx.post(f"{url}/v1/chat/completions", json={"messages": [QUESTION], "max_tokens": 4}, timeout=60)
    assert r2.status_code == 200


def test_second_turn_reuses_the_cached_prefix(sdk: OpenAI, model_id: str) -> None:
    first_turn = [SYSTEM, {"role": "user", "content": "Name a color of the rainbow."}]
    r1 = sdk.chat.completions.create(model=model_id, messages=first_turn, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    answer = r1.choices[0].message.content or ""
    second_turn = [*first_turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "Another one?"}]
    r2 = sdk.chat.completions.create(model=model_id, messages=second_turn, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert r2.usage is not None and r2.usage.prompt_tokens_details is not None
    cached = r2.usage.prompt_tokens_details.cached_tokens or 0
    assert r1.usage is not None
    # At least the whole first prompt was reused, so only the new turn was processed.
    assert cached >= r1.usage.prompt_tokens
    assert r2.usage.prompt_tokens - cached < r2.usage.prompt_tokens


def test_ignore_eos_generates_exactly_max_tokens(sdk: OpenAI, model_id: str) -> None:
    short = [SYSTEM, {"role": "user", "content": "Say hi."}]
    natural = sdk.chat.completions.create(model=model_id, messages=short, temperature=0, max_tokens=200)  # type: ignore[arg-type]
    assert natural.choices[0].finish_reason == "stop"
    assert natural.usage is not None and natural.usage.completion_tokens < 100
    forced = sdk.chat.completions.create(
        model=model_id,
        messages=short,
        temperature=0,
        max_tokens=100,
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 100
