"""Chat completions, field by field, through the real openai SDK.

Every response here is also validated against OpenAI's spec by the ``client``
fixture's response hook; ``spec_checks`` shows it ran.
"""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings

MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]
REPLY = "Paris is the capital of France."


def chat(sdk: OpenAI, **kwargs: Any) -> Any:
    return sdk.chat.completions.create(model="fake-model", messages=kwargs.pop("messages", MESSAGES), **kwargs)


def test_response_has_every_field_openai_sends(client: TestClient, spec_checks: list[str]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES})
    body = r.json()
    assert spec_checks == ["CreateChatCompletionResponse"]
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert choice["logprobs"] is None and choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


def test_cached_tokens_count_the_reused_prefix(sdk: OpenAI, engine: FakeEngine) -> None:
    first = chat(sdk)
    before = engine.prefilled_tokens
    second = chat(sdk)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # All but the last prompt token came from the cache: exactly what was not prefilled again.
    assert details.cached_tokens == second.usage.prompt_tokens - 1
    assert engine.prefilled_tokens - before == second.usage.prompt_tokens - details.cached_tokens


def test_max_completion_tokens_wins_over_max_tokens(sdk: OpenAI) -> None:
    r = chat(sdk, max_tokens=20, max_completion_tokens=5)
    assert r.choices[0].message.content == "Paris" and r.choices[0].finish_reason == "length"
    r = chat(sdk, max_tokens=5)
    assert r.choices[0].message.content == "Paris"


def test_max_tokens_is_capped_by_the_room_left_in_the_context() -> None:
    engine = FakeEngine(reply=lambda p: "x" * 2000, n_slots=1, n_ctx_per_seq=256)
    with TestClient(create_app(Settings(), engine=engine)) as c:
        r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_completion_tokens": 100_000})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] == 256


def test_context_overflow_says_how_many_tokens_were_asked_and_fit(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(sdk, messages=[{"role": "user", "content": "x" * 600}], max_tokens=10)
    assert err.value.code == "context_length_exceeded"
    message = err.value.message
    assert "512" in message  # the context
    body: Any = err.value.body
    prompt_tokens = int(message.split("(")[1].split(" ")[0])
    assert prompt_tokens > 600 and f"{prompt_tokens + 10} tokens" in message
    assert body["param"] == "messages"


def test_stop_strings_end_the_choice_and_never_show(sdk: OpenAI) -> None:
    assert chat(sdk, stop="capital").choices[0].message.content == "Paris is the "
    r = chat(sdk, stop=["France", "the"])
    assert r.choices[0].message.content == "Paris is " and r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as err:
        chat(sdk, stop=["a", "b", "c", "d", "e"])
    assert err.value.param is not None and err.value.param.startswith("stop")


def test_n_gives_n_choices_each_its_own_sequence(sdk: OpenAI, engine: FakeEngine) -> None:
    r = chat(sdk, n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == REPLY for c in r.choices)
    assert r.usage is not None and r.usage.completion_tokens == 3 * len(REPLY)
    with pytest.raises(openai.BadRequestError) as err:
        chat(sdk, n=17)
    assert err.value.param == "n"


def test_logprobs_only_when_asked_and_real_per_token(sdk: OpenAI) -> None:
    r = chat(sdk, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert "".join(e.token for e in lp.content) == REPLY
    for e in lp.content:
        assert e.bytes == list(e.token.encode())
        assert e.logprob == -0.25  # what the FakeEngine's StepOutput carried
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token
    r = chat(sdk, logprobs=True)
    assert r.choices[0].logprobs is not None
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content or [])
    assert chat(sdk).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as err:
        chat(sdk, top_logprobs=2)
    assert err.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError):
        chat(sdk, logprobs=True, top_logprobs=21)


@pytest.mark.parametrize(
    "bias",
    [{"x": 1}, {"9999": 1}, {"65": 101}, {"65": -100.5}],
    ids=["not-an-id", "outside-vocab", "too-big", "too-small"],
)
def test_bad_logit_bias_is_400(client: TestClient, bias: dict[str, float]) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "logit_bias": bias})
    assert r.status_code == 400
    assert r.json()["error"]["param"].startswith("logit_bias")


def test_logit_bias_within_range_is_accepted(sdk: OpenAI) -> None:
    assert chat(sdk, logit_bias={"65": 100, "66": -100}).choices[0].message.content == REPLY


def test_response_format_types(client: TestClient) -> None:
    def post(fmt: Any, **extra: Any) -> Any:
        return client.post("/v1/chat/completions", json={"messages": MESSAGES, "response_format": fmt, **extra})

    assert post({"type": "text"}).status_code == 200
    assert post({"type": "json_object"}).status_code == 200
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    ok = post({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    assert ok.status_code == 200
    r = post({"type": "xml"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format")
    r = post({"type": "json_schema", "json_schema": {"schema": schema}})  # no name
    assert r.status_code == 400 and "name" in r.json()["error"]["param"]
    strict_pattern = {"type": "string", "pattern": "^a+$"}
    r = post({"type": "json_schema", "json_schema": {"name": "p", "schema": strict_pattern, "strict": True}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "response_format.json_schema.schema" and "pattern" in err["message"]
    r = post({"type": "json_object"}, grammar='root ::= "x"')
    assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"


def test_bad_grammar_extension_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "grammar": "not a grammar"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("store", True),
        ("reasoning_effort", "high"),
        ("functions", [{"name": "f"}]),
        ("service_tier", "flex"),
        ("web_search_options", {}),
    ],
)
def test_unsupported_openai_fields_are_refused_by_name(client: TestClient, field: str, value: Any) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_harmless_values_of_unsupported_fields_and_unknown_fields_pass(client: TestClient) -> None:
    body = {
        "messages": MESSAGES,
        "store": False,
        "modalities": ["text"],
        "service_tier": "auto",
        "metadata": {"k": "v"},
        "not_an_openai_field": {"anything": 1},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_image_parts_are_refused_naming_the_part(client: TestClient) -> None:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x"}}]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400
    assert "image_url" in r.json()["error"]["message"]


def test_text_parts_are_joined(sdk: OpenAI) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    r = chat(sdk, messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}])
    assert r.choices[0].message.content == REPLY


def test_user_is_accepted_and_logged(sdk: OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        chat(sdk, user="user-1234")
    assert any("user-1234" in rec.getMessage() for rec in caplog.records)


def test_extensions_are_accepted_and_range_checked(client: TestClient) -> None:
    extensions = {"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "grammar": "root ::= [a-z]+"}
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES, **extensions}).status_code == 200
    for field, bad in [("top_k", -1), ("min_p", 2), ("repeat_penalty", -1), ("temperature", 2.5), ("top_p", 1.5)]:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, field: bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, field


def test_stream_options_need_stream(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_llama_server_json_extensions_are_checked_and_name_their_field(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    for path, base in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "x"})):
        assert client.post(path, json={**base, "json_schema": schema}).status_code == 200
        r = client.post(path, json={**base, "json_schema": {"type": "object", "$ref": "#/$defs/missing"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "json_schema", r.text
        r = client.post(path, json={**base, "json_schema": schema, "grammar": 'root ::= "x"'})
        assert r.status_code == 400 and r.json()["error"]["param"] == "json_schema"
        deep: dict[str, Any] = {"type": "object"}
        for _ in range(40):
            deep = {"type": "array", "items": deep}
        r = client.post(path, json={**base, "json_schema": deep})
        assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"]
    fmt = {"type": "json_object", "schema": {"type": "object", "$ref": "#/$defs/missing"}}
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.schema"
    fmt = {"type": "json_object", "schema": schema}
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "response_format": fmt, "json_schema": schema})
    assert r.status_code == 400 and r.json()["error"]["param"] == "json_schema"


def test_chat_template_kwargs_are_checked_over_http(client: TestClient) -> None:
    def post(kwargs: Any) -> Any:
        return client.post("/v1/chat/completions", json={"messages": MESSAGES, "chat_template_kwargs": kwargs})

    assert post({"enable_thinking": False, "name": "x", "n": 2.5}).status_code == 200
    for bad in ({"a": [1]}, {"tools": "x"}, "not an object"):
        r = post(bad)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("chat_template_kwargs"), r.text
