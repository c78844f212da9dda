"""Thinking models over HTTP: ``reasoning_content`` on messages and stream deltas, reasoning tokens in
usage, ``--reasoning-format none``, the per-request switch and earlier turns' reasoning in the prompt.
Every response is checked against OpenAI's spec (the conftest's hook)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.spec.openapi import OpenAISpec

THINKING_TEMPLATE = (Path(__file__).parents[1] / "fixtures" / "thinking-chat.jinja").read_text()
THOUGHT = "The user asks for a capital."
REPLY = f"<think>\n{THOUGHT}\n</think>\n\nParis."
USER = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda prompt: REPLY, n_slots=2, chat_template=THINKING_TEMPLATE)


def serve(engine: FakeEngine, spec: OpenAISpec, checks: list[str], **settings: Any) -> Iterator[OpenAI]:
    with TestClient(create_app(Settings(**settings), engine=engine)) as c:
        c.event_hooks["response"].append(spec_hook(spec, checks))
        yield OpenAI(base_url="http://testserver", api_key="unused", http_client=c, max_retries=0)


@pytest.fixture
def sdk(engine: FakeEngine, openai_spec: OpenAISpec, spec_checks: list[str]) -> Iterator[OpenAI]:
    yield from serve(engine, openai_spec, spec_checks)


def test_the_thinking_is_reasoning_content_and_counted(sdk: OpenAI, spec_checks: list[str]) -> None:
    r = sdk.chat.completions.create(model="fake-model", messages=USER)  # type: ignore[arg-type]
    message = r.choices[0].message
    assert message.content == "Paris." and message.model_extra == {"reasoning_content": THOUGHT}
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    # The fake's tokens are bytes: "<think>\n", the thought and "\n</think>" are reasoning, the rest not.
    assert r.usage.completion_tokens_details.reasoning_tokens == len(f"<think>\n{THOUGHT}\n</think>")
    assert r.usage.completion_tokens == len(REPLY)
    assert spec_checks == ["CreateChatCompletionResponse"]


def test_a_stream_sends_the_thinking_as_reasoning_deltas(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake-model",
        messages=USER,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, content, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            content.append(choice.delta.content or "")
    assert "".join(reasoning) == THOUGHT and "".join(content) == "Paris."
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == len(f"<think>\n{THOUGHT}\n</think>")


def test_reasoning_format_none_leaves_the_thinking_in_the_content(
    engine: FakeEngine, openai_spec: OpenAISpec, spec_checks: list[str]
) -> None:
    for sdk in serve(engine, openai_spec, spec_checks, reasoning_format="none"):
        r = sdk.chat.completions.create(model="fake-model", messages=USER)  # type: ignore[arg-type]
        assert r.choices[0].message.content == REPLY and not r.choices[0].message.model_extra
        assert r.usage is not None and r.usage.completion_tokens_details is not None
        assert r.usage.completion_tokens_details.reasoning_tokens == 0


def prompt(sdk: OpenAI, **body: Any) -> str:
    text: str = sdk.post("/apply-template", body={"messages": USER, **body}, cast_to=dict)["prompt"]  # type: ignore[index]
    return text


@pytest.mark.parametrize(
    ("fields", "thinking_off"),
    [
        ({}, False),
        ({"reasoning_effort": "none"}, True),
        ({"reasoning_effort": "high"}, False),
        ({"chat_template_kwargs": {"enable_thinking": False}}, True),
        ({"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}}, True),
    ],
)
def test_thinking_is_switched_per_request(sdk: OpenAI, fields: dict[str, Any], thinking_off: bool) -> None:
    assert prompt(sdk, **fields).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") is thinking_off


def test_reasoning_effort_without_a_thinking_template_is_refused(
    openai_spec: OpenAISpec, spec_checks: list[str]
) -> None:
    for sdk in serve(FakeEngine(reply=lambda p: "Paris."), openai_spec, spec_checks):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model="fake-model", messages=USER, reasoning_effort="low")  # type: ignore[arg-type]
        assert caught.value.param == "reasoning_effort"  # type: ignore[attr-defined]


def test_earlier_turns_reasoning_reaches_the_template(sdk: OpenAI) -> None:
    turns = [*USER, {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT}, *USER]
    assert f"<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\nParis.<|im_end|>" in prompt(sdk, messages=turns)
    # A thinking reply with a grammar is never split: the grammar writes the reply's shape.
    r = sdk.chat.completions.create(
        model="fake-model",
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    assert r.choices[0].message.content == REPLY
