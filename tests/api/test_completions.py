"""Legacy /v1/completions through the openai SDK: every prompt form, echo, logprobs, streaming."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.spec.openapi import sse_events

REPLY = "Paris is the capital of France."


def complete(sdk: OpenAI, **kwargs: Any) -> Any:
    return sdk.completions.create(model="fake-model", **kwargs)


def test_string_prompt_defaults_to_16_tokens(sdk: OpenAI, spec_checks: list[str]) -> None:
    r = complete(sdk, prompt="The capital of France is")
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == REPLY[:16] and r.choices[0].finish_reason == "length"
    assert r.choices[0].logprobs is None
    assert r.usage is not None and r.usage.prompt_tokens == 1 + len("The capital of France is")
    assert r.usage.completion_tokens == 16
    assert spec_checks == ["CreateCompletionResponse"]


def test_every_prompt_form_and_choice_numbering(sdk: OpenAI) -> None:
    r = complete(sdk, prompt=["one", "two"], n=2, max_tokens=5)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.text == "Paris" for c in r.choices)
    assert r.usage is not None and r.usage.prompt_tokens == (1 + 3) * 2 and r.usage.completion_tokens == 20
    ids = list(b"hello")
    r = complete(sdk, prompt=ids, max_tokens=3, echo=True)
    assert r.choices[0].text == "hello" + "Par"
    assert r.usage is not None and r.usage.prompt_tokens == 5  # ids are taken as given: no BOS added
    r = complete(sdk, prompt=[ids, list(b"hi")], max_tokens=1, echo=True)
    assert [c.text for c in r.choices] == ["helloP", "hiP"]


def test_echo_with_max_tokens_zero_returns_the_prompt(sdk: OpenAI) -> None:
    r = complete(sdk, prompt="Say it back", echo=True, max_tokens=0)
    assert r.choices[0].text == "Say it back" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 0


def test_stop_and_long_max_tokens(sdk: OpenAI) -> None:
    r = complete(sdk, prompt="x", max_tokens=200, stop=[" of"])
    assert r.choices[0].text == "Paris is the capital" and r.choices[0].finish_reason == "stop"


def test_legacy_logprobs_format(sdk: OpenAI) -> None:
    r = complete(sdk, prompt="x", max_tokens=5, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == list("Paris") and lp.token_logprobs == [-0.25] * 5
    assert lp.text_offset == [0, 1, 2, 3, 4]
    assert lp.top_logprobs is not None and all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.top_logprobs[0]["P"] == -0.25
    # Up to ten alternatives may be asked for, beyond OpenAI's five (the fake engine knows two).
    wide = complete(sdk, prompt="x", max_tokens=2, logprobs=10).choices[0].logprobs
    assert wide is not None and wide.top_logprobs is not None and all(len(t) == 2 for t in wide.top_logprobs)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "suffix": "tail"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "logprobs"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1, 2, 99999]}, "prompt"),
        ({"prompt": "x", "logprobs": 11}, "logprobs"),
        ({"prompt": "x", "n": 20}, "n"),
        ({"prompt": "x" * 600}, "prompt"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_refusals_name_the_field(client: TestClient, body: dict[str, Any], param: str) -> None:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_overflow_is_context_length_exceeded(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        complete(sdk, prompt="x" * 600)
    assert err.value.code == "context_length_exceeded" and "512" in err.value.message


def test_streaming_completions(client: TestClient, spec_checks: list[str]) -> None:
    body = {"prompt": ["a", "b"], "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert spec_checks.count("CreateCompletionResponse") == len(chunks)
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert "".join(ch["text"] for ch in mine) == "Paris"
        assert [ch["finish_reason"] for ch in mine if ch["finish_reason"]] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in chunks[:-1])


def test_streaming_through_the_sdk_with_echo(sdk: OpenAI) -> None:
    stream = sdk.completions.create(model="fake-model", prompt="Q: ", max_tokens=5, stream=True, echo=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "Q: Paris"


def test_streamed_logprobs_in_the_legacy_format(client: TestClient, spec_checks: list[str]) -> None:
    body = {"prompt": "x", "max_tokens": 3, "stream": True, "logprobs": 1}
    with client.stream("POST", "/v1/completions", json=body) as r:
        chunks = [json.loads(d) for _, d in sse_events(r.read().decode())[:-1]]
    with_lp = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert [lp["tokens"] for lp in with_lp] == [["P"], ["a"], ["r"]]
    assert [lp["text_offset"] for lp in with_lp] == [[0], [1], [2]]
    assert all(len(lp["top_logprobs"][0]) == 1 for lp in with_lp)
    assert spec_checks.count("CreateCompletionResponse") == len(chunks)
