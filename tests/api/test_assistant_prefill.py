"""Assistant prefill and vLLM's ``continue_final_message`` / ``add_generation_prompt``: the prompt the
model reads (``/apply-template`` shows it, and chat generates from the same text) and what comes back."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.helpers.recording_engine import RecordingEngine

USER = {"role": "user", "content": "Capital of France?"}
PREFILL = {"role": "assistant", "content": "The capital is"}


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(reply=lambda prompt: " Paris.", n_slots=2, n_ctx_per_seq=512)


def prompt(client: TestClient, messages: list[dict[str, Any]], **fields: Any) -> str:
    r = client.post("/apply-template", json={"messages": messages, **fields})
    assert r.status_code == 200, r.text
    text: str = r.json()["prompt"]
    return text


def test_a_final_assistant_message_is_continued(client: TestClient, sdk: OpenAI, engine: RecordingEngine) -> None:
    assert prompt(client, [USER, PREFILL]).endswith("<|im_start|>assistant\nThe capital is")
    root = OpenAI(base_url="http://testserver", api_key="unused", http_client=client, max_retries=0)
    reply = root.chat.completions.create(model="fake-model", messages=[USER, PREFILL])  # type: ignore[list-item]
    assert engine.prompts[-1].endswith("<|im_start|>assistant\nThe capital is")  # chat reads the same text
    assert reply.choices[0].message.content == " Paris."  # only the continuation, as llama-server returns it


def test_continue_final_message_false_answers_the_assistant_turn_instead(client: TestClient) -> None:
    closed = "<|im_start|>assistant\nThe capital is<|im_end|>\n<|im_start|>assistant\n"
    assert prompt(client, [USER, PREFILL], continue_final_message=False).endswith(closed)
    assert prompt(client, [USER, PREFILL], add_generation_prompt=True).endswith(closed)


def test_add_generation_prompt_false_ends_after_the_last_turn(client: TestClient) -> None:
    assert prompt(client, [USER], add_generation_prompt=False).endswith("Capital of France?<|im_end|>\n")
    assert prompt(client, [USER]).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_continue_final_message_opens_any_final_message(client: TestClient) -> None:
    opened = prompt(client, [{"role": "user", "content": "Write a haiku about"}], continue_final_message=True)
    assert opened.endswith("<|im_start|>user\nWrite a haiku about")
    empty = prompt(client, [USER, {"role": "assistant", "content": ""}])
    assert empty.endswith("Capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_both_true_is_a_400_naming_both(sdk: OpenAI, client: TestClient) -> None:
    both = {"continue_final_message": True, "add_generation_prompt": True}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="fake-model", messages=[USER, PREFILL], extra_body=both)  # type: ignore[list-item]
    message = str(caught.value.body)
    assert "continue_final_message" in message and "add_generation_prompt" in message
    r = client.post("/apply-template", json={"messages": [USER, PREFILL], **both})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


def test_a_final_tool_call_is_not_continued(client: TestClient) -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert prompt(client, [USER, call]).endswith("<|im_start|>assistant\n")
    r = client.post("/apply-template", json={"messages": [USER, call], "continue_final_message": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"
