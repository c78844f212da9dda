"""What ``/v1/responses`` refuses, and how: a 400 (or 404) in OpenAI's error shape naming the field,
never a silent ignore and never a 500; and after each refusal the server still answers. Every
error body is validated against the spec (``ErrorResponse``) by the conftest's hook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.spec.openapi import OpenAISpec

THINKING_TEMPLATE = (Path(__file__).parents[1] / "fixtures" / "thinking-chat.jinja").read_text()
OK = {"model": "fake-model", "input": "Say hi."}


@pytest.fixture
def client(engine: FakeEngine, openai_spec: OpenAISpec, spec_checks: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_queue=8, state_dir=":memory:", max_messages=64), engine=engine)) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, spec_checks))
        yield c


def refused(client: TestClient, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    r = client.post("/v1/responses", json=body)
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    # The server keeps serving after every refusal.
    assert client.post("/v1/responses", json=OK).json()["status"] == "completed"
    return error


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("tools[0]", {"tools": [{"type": "web_search"}]}),
        ("tools[1]", {"tools": [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": []}]}),
        ("background", {"background": True}),
        ("conversation", {"conversation": "conv_1"}),
        ("prompt", {"prompt": {"id": "pmpt_1"}}),
        ("reasoning", {"reasoning": {"effort": "high"}}),
        ("reasoning.summary", {"reasoning": {"summary": "detailed"}}),
        ("include", {"include": ["reasoning.encrypted_content"]}),
        ("service_tier", {"service_tier": "flex"}),
        ("text.verbosity", {"text": {"verbosity": "high"}}),
        ("tool_choice", {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "web_search"}}),
        ("input[0].content[0]", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
        (
            "input[0].content[1]",
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_file", "file_id": "f"}],
                    }
                ]
            },
        ),
        ("input[1]", {"input": [{"role": "user", "content": "a"}, {"type": "web_search_call", "id": "ws_1"}]}),
        ("input[0]", {"input": [{"type": "item_reference", "id": "msg_1"}]}),
        ("input[0]", {"input": [{"type": ["message"], "role": "user", "content": "a"}]}),
        ("metadata", {"metadata": {f"k{i}": "v" for i in range(17)}}),
        ("max_output_tokens", {"max_output_tokens": 0}),
        ("temperature", {"temperature": 3}),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(client: TestClient, field: str, body: dict[str, Any]) -> None:
    error = refused(client, {**OK, **body})
    assert error["type"] == "invalid_request_error" and error["param"] == field, error


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user"},  # no content
        {"role": "robot", "content": "a"},
        {"type": "function_call", "name": "f", "arguments": "{}"},  # no call_id
        {"type": "function_call_output", "call_id": "c"},  # no output
        {"type": "message", "role": "user", "content": "a", "colour": "red"},  # a field no item has
        {"role": "user", "content": [{"type": "input_text"}]},
        "just a string",
        42,
    ],
)
def test_malformed_items_are_a_400(client: TestClient, item: Any) -> None:
    error = refused(client, {**OK, "input": [item]})
    assert error["param"] is not None and error["param"].startswith("input"), error


def test_unknown_fields_are_a_400_naming_them(client: TestClient) -> None:
    assert refused(client, {**OK, "max_tokens": 5})["param"] == "max_tokens"


def test_ten_thousand_items_are_a_400(engine: FakeEngine) -> None:
    items = [{"role": "user", "content": "a"}] * 10_000
    with TestClient(create_app(Settings(), engine=engine)) as c:  # the default --max-messages
        error = refused(c, {**OK, "input": items})
    assert error["param"] == "input" and "at most 2048 items" in error["message"]


def test_an_unknown_previous_response_id_is_a_400_naming_the_field(client: TestClient) -> None:
    for prev in ("resp_nothere", "resp_" + "x" * 10_000):
        error = refused(client, {**OK, "previous_response_id": prev})
        assert error["param"] == "previous_response_id" and error["code"] == "previous_response_not_found"
        assert len(error["message"]) < 300  # a 10 kB id is not echoed back whole


def test_unknown_response_ids_are_404_on_every_route(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/responses/resp_nothere"),
        ("DELETE", "/v1/responses/resp_nothere"),
        ("GET", "/v1/responses/resp_nothere/input_items"),
        ("POST", "/v1/responses/resp_nothere/cancel"),
        ("GET", "/v1/responses/" + "x" * 10_000),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_cancel_and_replay_are_refused_for_a_stored_response(client: TestClient) -> None:
    rid = client.post("/v1/responses", json=OK).json()["id"]
    assert client.post(f"/v1/responses/{rid}/cancel").status_code == 400  # no background responses here
    r = client.get(f"/v1/responses/{rid}", params={"stream": "true"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    r = client.get(f"/v1/responses/{rid}/input_items", params={"after": "msg_nothere"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"


def test_a_prompt_over_the_context_is_a_400_unless_truncation_is_auto(client: TestClient) -> None:
    # The fake's context is 512 tokens of one byte each: ten turns of 100 bytes do not fit.
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "w" * 98} for i in range(10)]
    error = refused(client, {**OK, "input": turns})
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    r = client.post("/v1/responses", json={**OK, "input": turns, "truncation": "auto"})
    assert r.status_code == 200 and r.json()["truncation"] == "auto"
    dropped = int(r.headers["x-llamaserve-truncated-items"])
    assert 0 < dropped < 10 and dropped % 2 == 0  # whole turns, from the oldest
    listed = client.get(f"/v1/responses/{r.json()['id']}/input_items", params={"limit": 100}).json()["data"]
    assert len(listed) == 10  # the input is kept as sent; only the prompt left the oldest out


def test_another_key_cannot_see_or_chain_on_a_response(engine: FakeEngine) -> None:
    settings = Settings(api_keys=["sk-a", "sk-b"], state_dir=":memory:")
    with TestClient(create_app(settings, engine=engine)) as c:
        a, b = {"Authorization": "Bearer sk-a"}, {"Authorization": "Bearer sk-b"}
        rid = c.post("/v1/responses", json=OK, headers=a).json()["id"]
        assert c.get(f"/v1/responses/{rid}", headers=a).status_code == 200
        for method, path in [("GET", ""), ("GET", "/input_items"), ("DELETE", "")]:
            r = c.request(method, f"/v1/responses/{rid}{path}", headers=b)
            assert r.status_code == 404 and "Say hi" not in r.text
        r = c.post("/v1/responses", json={**OK, "previous_response_id": rid}, headers=b)
        assert r.status_code == 400 and r.json()["error"]["code"] == "previous_response_not_found"
        assert c.post("/v1/responses", json={**OK, "previous_response_id": rid}, headers=a).status_code == 200
        assert c.get(f"/v1/responses/{rid}", headers=a).status_code == 200  # b's delete did nothing


def test_a_thinking_model_gives_a_reasoning_item_first(openai_spec: OpenAISpec, spec_checks: list[str]) -> None:
    engine = FakeEngine(reply=lambda p: "<think>\nA capital.\n</think>\n\nParis.", chat_template=THINKING_TEMPLATE)
    with TestClient(create_app(Settings(state_dir=":memory:"), engine=engine)) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, spec_checks))
        body = c.post("/v1/responses", json={**OK, "reasoning": {"effort": "low"}}).json()
        reasoning, message = body["output"]
        assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
        assert reasoning["content"] == [{"type": "reasoning_text", "text": "A capital."}]
        assert message["content"][0]["text"] == "Paris."
        assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == len("<think>\nA capital.\n</think>")
        events = c.post("/v1/responses", json={**OK, "stream": True}).text
        assert events.index("response.reasoning_text.delta") < events.index("response.output_text.delta")
        # The reasoning item goes back into the conversation as the assistant turn's thinking.
        follow = c.post("/v1/responses", json={**OK, "previous_response_id": body["id"]})
        assert follow.status_code == 200
    assert "ResponseStreamEvent" in spec_checks


def test_a_model_that_does_not_think_never_gives_a_reasoning_item(client: TestClient) -> None:
    body = client.post("/v1/responses", json=OK).json()
    assert [i["type"] for i in body["output"]] == ["message"]
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
