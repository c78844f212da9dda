"""Hand-written hostile bodies: each is answered with a 4xx in OpenAI's error shape, and the server
goes on serving. Two inputs that look hostile are data, not attacks, and are served (see the last tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.services.limits import RequestLimits, json_depth_exceeds
from server.settings import Settings

USER = {"role": "user", "content": "hi"}
JSON = {"content-type": "application/json"}


def _nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# (name, raw body, expected status, expected param or None)
HOSTILE: list[tuple[str, bytes, int, str | None]] = [
    ("invalid UTF-8", b'{"messages":[{"role":"user","content":"\xff\xfe\xc3("}]}', 400, None),
    ("10 MB body", b'{"messages":[{"role":"user","content":"' + b"a" * 10_000_000 + b'"}]}', 413, None),
    ("10,000 messages", _raw({"messages": [USER] * 10_000}), 400, "messages"),
    ("deeply nested JSON", b'{"messages":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}", 400, None),
    ("deeply nested extra field", b'{"messages":[],"metadata":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, None),
    (
        "deeply nested tool parameters",
        _raw(
            {
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested_schema(100)}}],
            }
        ),
        400,
        "tools[0].function.parameters",
    ),
    (
        "deeply nested json_schema",
        _raw(
            {
                "messages": [USER],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _nested_schema(100)}},
            }
        ),
        400,
        "response_format",
    ),
    ("NaN temperature", b'{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}', 400, "temperature"),
    ("Infinity max_tokens", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":Infinity}', 400, "max_tokens"),
    ("-Infinity top_p", b'{"messages":[{"role":"user","content":"hi"}],"top_p":-Infinity}', 400, "top_p"),
    ("NaN logit bias", b'{"messages":[{"role":"user","content":"hi"}],"logit_bias":{"5":NaN}}', 400, None),
    ("negative max_tokens", _raw({"messages": [USER], "max_tokens": -5}), 400, "max_tokens"),
    (
        "zero max_completion_tokens",
        _raw({"messages": [USER], "max_completion_tokens": 0}),
        400,
        "max_completion_tokens",
    ),
    ("huge max_tokens", _raw({"messages": [USER], "max_tokens": 10**30}), 400, "max_tokens"),
    ("2**64 max_tokens", _raw({"messages": [USER], "max_tokens": 2**64}), 400, "max_tokens"),
    ("n=10000", _raw({"messages": [USER], "n": 10_000}), 400, "n"),
    ("raw control characters", b'{"messages":[{"role":"user","content":"a\x01\x00b"}]}', 400, None),
    ("lone surrogate", b'{"messages":[{"role":"user","content":"x\\ud800y"}]}', 400, "messages[0].content"),
    ("huge stop string", _raw({"messages": [USER], "stop": ["x" * 10_000]}), 400, "stop"),
    ("too many stops", _raw({"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}), 400, None),
    ("huge grammar", _raw({"messages": [USER], "grammar": "root ::= " + '"a" ' * 50_000}), 400, "grammar"),
    ("huge logit_bias", _raw({"messages": [USER], "logit_bias": {str(i): 1 for i in range(5000)}}), 400, "logit_bias"),
    ("empty body", b"", 400, None),
    ("JSON null", b"null", 400, None),
    ("JSON array", b"[]", 400, None),
    ("no messages", _raw({"messages": []}), 400, "messages"),
    ("messages not a list", _raw({"messages": "hi"}), 400, "messages"),
    ("unknown role", _raw({"messages": [{"role": "root", "content": "x"}]}), 400, None),
    ("truncated JSON", b'{"messages":[{"role":"user","content":"hi"', 400, None),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    engine = FakeEngine(reply=lambda prompt: prompt[-80:], n_slots=2, n_ctx_per_seq=4096)
    with TestClient(create_app(Settings(max_queue=4), engine=engine)) as c:
        yield c


def assert_still_serving(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 3})
    assert r.status_code == 200, r.text
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["slots_busy"] == 0 and health["requests_waiting"] == 0


@pytest.mark.parametrize(("name", "body", "status", "param"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_is_a_4xx_in_openai_shape(
    client: TestClient, name: str, body: bytes, status: int, param: str | None
) -> None:
    r = client.post("/v1/chat/completions", content=body, headers=JSON)
    assert r.status_code == status, r.text[:500]
    data = r.json()
    assert set(data) == {"error"}
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param
    assert "Traceback" not in r.text
    assert_still_serving(client)


def test_the_server_survives_the_whole_table_in_a_row(client: TestClient) -> None:
    for _name, body, status, _param in HOSTILE:
        assert client.post("/v1/chat/completions", content=body, headers=JSON).status_code == status
    assert_still_serving(client)


def test_jinja_in_content_is_text_not_template(client: TestClient) -> None:
    # The sandboxed template inserts content as a value; it is never parsed as a template itself.
    injection = "{{ 7*7 }}{% for x in range(3) %}X{% endfor %}{{ ''.__class__.__mro__[1].__subclasses__() }}"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": injection}]})
    assert r.status_code == 200
    echoed = r.json()["choices"][0]["message"]["content"]  # the fake engine replies with the prompt's tail
    assert "{{ ''.__class__.__mro__[1].__subclasses__() }}" in echoed
    assert "49" not in echoed and "XXX" not in echoed and "<class" not in echoed


def test_escaped_control_characters_are_text_and_served(client: TestClient) -> None:
    # \u0000 and friends are valid JSON strings: refused only when raw (invalid JSON), above.
    content = "a\u0000\u0007\u001b[31mb"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200
    assert content in r.json()["choices"][0]["message"]["content"]


def test_limits_are_configurable() -> None:
    engine = FakeEngine(n_slots=1, n_ctx_per_seq=4096)
    settings = Settings(max_messages=2, max_stop=1, max_stop_length=3, max_tokens_limit=10, max_n=2)
    with TestClient(create_app(settings, engine=engine)) as c:
        cases = [
            ({"messages": [USER] * 3}, "messages"),
            ({"messages": [USER], "stop": ["a", "b"]}, "stop"),
            ({"messages": [USER], "stop": "abcd"}, "stop"),
            ({"messages": [USER], "max_tokens": 11}, "max_tokens"),
            ({"messages": [USER], "max_completion_tokens": 11}, "max_completion_tokens"),
            ({"messages": [USER], "n": 3}, "n"),
        ]
        for body, param in cases:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
        ok = c.post("/v1/chat/completions", json={"messages": [USER] * 2, "max_tokens": 10, "stop": "abc", "n": 2})
        assert ok.status_code == 200


def test_json_depth_counts_levels_without_recursion() -> None:
    assert not json_depth_exceeds({"a": [1, 2]}, 2)
    assert json_depth_exceeds({"a": [[1]]}, 2)
    deep: Any = []
    for _ in range(200_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert json_depth_exceeds(deep, RequestLimits().max_json_depth)
