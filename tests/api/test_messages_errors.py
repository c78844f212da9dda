"""Errors on /v1/messages*: Anthropic's shape and status, so the ``anthropic`` SDK raises its own classes;
what this server cannot read is a 400 naming it; hostile bodies are 400s and the server goes on serving.
OpenAI's routes keep OpenAI's shape on the same server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.base import SamplingParams
from server.engine.fake import FakeEngine
from server.errors import ANTHROPIC_ERROR_TYPES, LlamaserveError, ServiceUnavailableError
from server.runtime.events import GenerationRequest
from server.services.model import LoadedModel
from server.settings import Settings
from tests.helpers.anthropic_wire import wire_hook

MODEL = "fake-model"
USER = {"role": "user", "content": "hi"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda prompt: "Paris is the capital of France.", n_slots=2, n_ctx_per_seq=4096)


@pytest.fixture
def checked() -> list[str]:
    return []


def serve(engine: FakeEngine, checked: list[str], **settings: Any) -> TestClient:
    client = TestClient(create_app(Settings(**{"max_queue": 4, **settings}), engine=engine))
    client.event_hooks["response"].append(wire_hook(checked))
    return client


@pytest.fixture
def client(engine: FakeEngine, checked: list[str]) -> Iterator[TestClient]:
    with serve(engine, checked) as c:
        yield c


def sdk_for(client: TestClient, key: str | None = "unused", **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://testserver", api_key=key, http_client=client, max_retries=0, **kwargs)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 8, "messages": [USER], **fields}


def assert_anthropic_error(r: Any, status: int, kind: str, *, names: str | None = None) -> None:
    assert r.status_code == status, r.text[:300]
    data = r.json()
    assert set(data) == {"type", "error"} and data["type"] == "error"
    assert data["error"]["type"] == kind and data["error"]["message"]
    if names is not None:
        assert names in data["error"]["message"], data
    assert "Traceback" not in r.text


def assert_still_serving(client: TestClient) -> None:
    r = client.post("/v1/messages", json=body())
    assert r.status_code == 200, r.text
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["slots_busy"] == 0 and health["requests_waiting"] == 0


# ---- the SDK's exception classes --------------------------------------------------------------


def test_missing_max_tokens_is_a_bad_request(client: TestClient, checked: list[str]) -> None:
    # The SDK's create() insists on max_tokens itself, so post the body through its generic client.
    with pytest.raises(anthropic.BadRequestError) as err:
        sdk_for(client).post("/v1/messages", body={"model": MODEL, "messages": [USER]}, cast_to=Message)
    assert err.value.status_code == 400
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in err.value.message
    assert checked == ["error"]


@pytest.mark.parametrize("how", ["bearer", "x-api-key"])
def test_a_wrong_key_is_an_authentication_error(engine: FakeEngine, checked: list[str], how: str) -> None:
    with serve(engine, checked, api_keys=["right-key"]) as client:

        def sdk(key: str) -> anthropic.Anthropic:
            if how == "bearer":  # what the current SDK sends for api_key (and for auth_token)
                return sdk_for(client, None, auth_token=key)
            return sdk_for(client, key, default_headers={"x-api-key": key, "Authorization": anthropic.Omit()})

        with pytest.raises(anthropic.AuthenticationError) as err:
            sdk("wrong-key").messages.create(model=MODEL, max_tokens=8, messages=[USER])
        assert err.value.status_code == 401
        assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(anthropic.AuthenticationError):
            sdk("wrong-key").messages.count_tokens(model=MODEL, messages=[USER])
        assert sdk("right-key").messages.create(model=MODEL, max_tokens=8, messages=[USER]).stop_reason == "max_tokens"
        # The same refusal on an OpenAI route keeps OpenAI's shape.
        r = client.post("/v1/chat/completions", json={"messages": [USER]}, headers={"x-api-key": "wrong-key"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_unknown_model_is_not_found(engine: FakeEngine, checked: list[str]) -> None:
    with serve(engine, checked, strict_model_name=True) as client:
        _refuses_unknown_models(client)


def test_with_one_model_a_claude_name_is_answered_by_it(client: TestClient) -> None:
    reply = sdk_for(client).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[USER])
    assert reply.model == "fake-model"  # the real id: an agent's claude-* default reaches the served model


def _refuses_unknown_models(client: TestClient) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        sdk_for(client).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[USER])
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        sdk_for(client).messages.count_tokens(model="claude-sonnet-4-5", messages=[USER])
    assert_anthropic_error(client.post("/v1/messages/batches", json={}), 404, "not_found_error")


def _fill_the_queue(client: TestClient) -> list[Any]:
    """Take both slots and the whole queue with long requests, from the app's own event loop."""
    loaded: LoadedModel = client.portal.call(client.app.state.llamaserve.registry.get, None)  # type: ignore[attr-defined,union-attr]
    request = GenerationRequest(list(b"long"), SamplingParams(), 10_000)
    return [client.portal.call(loaded.scheduler.submit, request) for _ in range(2 + 4)]  # type: ignore[union-attr]


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(checked: list[str]) -> None:
    engine = FakeEngine(reply=lambda p: "x" * 10_000, n_slots=2, n_ctx_per_seq=16_384, step_delay=0.01)
    with serve(engine, checked) as client:
        handles = _fill_the_queue(client)
        try:
            with pytest.raises(anthropic.RateLimitError) as err:
                sdk_for(client).messages.create(model=MODEL, max_tokens=8, messages=[USER])
            assert err.value.status_code == 429
            assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            assert int(err.value.response.headers["retry-after"]) >= 1
            with pytest.raises(anthropic.RateLimitError):  # a stream is refused before it starts
                sdk_for(client).messages.create(model=MODEL, max_tokens=8, messages=[USER], stream=True)
        finally:
            for h in handles:
                client.portal.call(h.cancel)


def test_a_body_over_the_limit_is_request_too_large(engine: FakeEngine, checked: list[str]) -> None:
    with serve(engine, checked, max_body_bytes=10_000) as client:
        with pytest.raises(anthropic.APIStatusError) as err:
            sdk_for(client).messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "a" * 20_000}]
            )
        assert err.value.status_code == 413
        assert err.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a" * 20_000}]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_an_error_after_the_stream_started_is_an_error_event(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_next_step = True
    stream = sdk_for(client).messages.stream(model=MODEL, max_tokens=8, messages=[USER])
    with pytest.raises(anthropic.APIStatusError) as err, stream as events:
        list(events)
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    r = client.post("/v1/messages", json=body(stream=True))  # and the next one is served
    assert r.status_code == 200 and "event: message_stop" in r.text


def test_every_error_status_has_an_anthropic_type() -> None:
    assert ServiceUnavailableError("loading").to_anthropic_dict() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "loading"},
    }
    assert LlamaserveError("boom").anthropic_type == "api_error"
    odd = LlamaserveError("odd")
    odd.status_code = 405
    assert odd.anthropic_type == "invalid_request_error"
    assert set(ANTHROPIC_ERROR_TYPES.values()) >= {"invalid_request_error", "rate_limit_error", "request_too_large"}


# ---- what this server cannot read: a 400 naming it --------------------------------------------

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "image block",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}]),
        "messages[0].content[1]",
    ),
    ("document block", body(messages=[{"role": "user", "content": [DOCUMENT]}]), "'document'"),
    (
        "image in a tool result",
        body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]}]}]),
        "messages[0].content[0].content[0]",
    ),
    ("server tool", body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools[0]"),
    ("spaced prefill", body(messages=[USER, {"role": "assistant", "content": "The answer is "}]), "whitespace"),
    ("thinking with a budget", body(thinking={"type": "enabled", "budget_tokens": 2048}), "thinking"),
    ("unknown field", body(frobnicate=True), "frobnicate"),
    (
        "unknown block field",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "foo": 1}]}]),
        "foo",
    ),
    ("mcp servers", body(mcp_servers=[{"type": "url", "url": "http://x", "name": "x"}]), "mcp_servers"),
    ("container", body(container="container_1"), "container"),
    (
        "tool_use in a user turn",
        body(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]),
        "assistant turn",
    ),
    (
        "unknown tool in tool_choice",
        body(tools=[{"name": "f", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "g"}),
        "'g'",
    ),
    ("tool_choice any without tools", body(tool_choice={"type": "any"}), "tool_choice"),
    ("temperature above 1", body(temperature=1.5), "temperature"),
    ("max_tokens on count_tokens", {"model": MODEL, "messages": [USER], "max_tokens": 5}, "max_tokens"),
    ("only a system message", body(messages=[{"role": "system", "content": "x"}]), "no user turn"),
]


@pytest.mark.parametrize(("name", "payload", "named"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_cannot_be_served_is_a_400_naming_it(
    client: TestClient, name: str, payload: dict[str, Any], named: str
) -> None:
    path = "/v1/messages/count_tokens" if name == "max_tokens on count_tokens" else "/v1/messages"
    assert_anthropic_error(client.post(path, json=payload), 400, "invalid_request_error", names=named)


# ---- hostile bodies ---------------------------------------------------------------------------


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        value = {"type": "object", "properties": {"a": value}}
    return value


def _raw(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


HOSTILE: list[tuple[str, bytes]] = [
    (
        "deeply nested JSON",
        b'{"model":"fake-model","max_tokens":8,"messages":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ),
    (
        "deeply nested extra field",
        b'{"model":"fake-model","max_tokens":8,"messages":[],"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ),
    ("deeply nested input_schema", _raw(body(tools=[{"name": "f", "input_schema": _nested(100)}]))),
    (
        "deeply nested tool_use input",
        _raw(
            body(
                messages=[
                    USER,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": _nested(100)}],
                    },
                    USER,
                ]
            )
        ),
    ),
    (
        "deeply nested context_management",
        b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":"x"}],"context_management":'
        + b'{"a":' * 5000
        + b"1"
        + b"}" * 5001,
    ),
    ("10,000 blocks", _raw(body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * 10_000}]))),
    ("10,000 system blocks", _raw(body(system=[{"type": "text", "text": "x"}] * 10_000))),
    ("10,000 messages", _raw(body(messages=[USER] * 10_000))),
    (
        "lone surrogate in text",
        b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":"x\\ud800y"}]}',
    ),
    (
        "lone surrogate in system",
        b'{"model":"fake-model","max_tokens":8,"system":"\\udfff","messages":[{"role":"user","content":"x"}]}',
    ),
    (
        "lone surrogate in a tool result",
        b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":[{"type":"tool_result",'
        b'"tool_use_id":"t","content":"\\ud83d"}]}]}',
    ),
    ("invalid UTF-8", b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":"\xff\xfe"}]}'),
    ("truncated JSON", b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user"'),
    ("JSON array", b"[]"),
    ("empty body", b""),
    (
        "NaN temperature",
        b'{"model":"fake-model","max_tokens":8,"temperature":NaN,"messages":[{"role":"user","content":"x"}]}',
    ),
    ("negative max_tokens", _raw(body(max_tokens=-1))),
    ("huge max_tokens", _raw(body(max_tokens=10**30))),
    ("too many stop sequences", _raw(body(stop_sequences=["a", "b", "c", "d", "e"]))),
    ("huge stop sequence", _raw(body(stop_sequences=["x" * 10_000]))),
    ("no messages", _raw(body(messages=[]))),
    ("unknown role", _raw(body(messages=[{"role": "tool", "content": "x"}]))),
    ("unknown block type", _raw(body(messages=[{"role": "user", "content": [{"type": "holo", "x": 1}]}]))),
]


# What the refusal says, where the body is refused by a limit of ours (not just by the parser).
NAMED = {
    "deeply nested input_schema": "nests deeper",
    "deeply nested tool_use input": "nests deeper",
    "10,000 blocks": "at most 2048 blocks",
    "10,000 system blocks": "'system' may hold",
    "10,000 messages": "'messages' may hold",
    "lone surrogate in text": "not valid Unicode",
    "lone surrogate in system": "not valid Unicode",
    "lone surrogate in a tool result": "not valid Unicode",
    "too many stop sequences": "stop_sequences",
    "huge stop sequence": "stop sequence",
    "huge max_tokens": "max_tokens",
}


@pytest.mark.parametrize(("name", "raw"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_400s_and_the_server_keeps_serving(client: TestClient, name: str, raw: bytes) -> None:
    r = client.post("/v1/messages", content=raw, headers=JSON)
    assert_anthropic_error(r, 400, "invalid_request_error", names=NAMED.get(name))
    # count_tokens reads the same prompt fields (and takes no max_tokens).
    counted = client.post("/v1/messages/count_tokens", content=raw.replace(b'"max_tokens":8,', b""), headers=JSON)
    assert_anthropic_error(counted, 400, "invalid_request_error")
    if name in NAMED and "max_tokens" not in name and "stop" not in name:
        assert NAMED[name] in counted.json()["error"]["message"]
    assert_still_serving(client)
