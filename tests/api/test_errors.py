"""Every failure in OpenAI's error shape, and the openai SDK error class each one raises."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.base import Engine
from server.engine.fake import FakeEngine
from server.errors import AuthenticationError, QueueFullError, ServiceUnavailableError
from server.settings import Settings
from tests.api.conftest import STRICT, spec_hook
from tests.spec.openapi import OpenAISpec

MESSAGES: Any = [{"role": "user", "content": "Hi"}]


def sdk_for(client: TestClient, key: str = "unused") -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def test_bad_request_error(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=3)
    assert err.value.status_code == 400 and err.value.param == "temperature"
    assert err.value.type == "invalid_request_error"


def test_malformed_json_and_wrong_types_are_400_not_422(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", json={"messages": "not a list"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = client.post("/v1/chat/completions", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400


@pytest.mark.parametrize("settings", [STRICT], ids=["strict-model-name"])
def test_not_found_errors(sdk: OpenAI, client: TestClient) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="gpt-4o", prompt="x")
    r = client.post("/v1/nothing/here", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_method_not_allowed_is_405_in_openai_shape(client: TestClient) -> None:
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]
    r = client.delete("/v1/models")
    assert r.status_code == 405


def test_authentication_error_for_a_wrong_key(openai_spec: OpenAISpec) -> None:
    app = create_app(Settings(api_keys=["right-key"]), engine=FakeEngine())
    checks: list[str] = []
    with TestClient(app) as client:
        client.event_hooks["response"].append(spec_hook(openai_spec, checks))
        with pytest.raises(openai.AuthenticationError) as err:
            sdk_for(client, "wrong-key").models.list()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        assert [m.id for m in sdk_for(client, "right-key").models.list()] == ["fake-model"]
    assert checks == ["ErrorResponse", "ListModelsResponse"]


def test_rate_limit_error_when_the_queue_is_full(sdk: OpenAI) -> None:
    # Two slots and a queue of four: sixteen choices cannot all wait.
    with pytest.raises(openai.RateLimitError) as err:
        sdk.chat.completions.create(model="fake-model", messages=MESSAGES, n=16)
    assert err.value.status_code == 429
    assert int(err.value.response.headers["retry-after"]) >= 1
    # Nothing of the refused request stays queued: the next one is served.
    assert sdk.chat.completions.create(model="fake-model", messages=MESSAGES).choices[0].finish_reason == "stop"


@pytest.fixture
def loading_client(openai_spec: OpenAISpec) -> Iterator[TestClient]:
    release = threading.Event()

    def slow_factory(settings: Settings) -> Engine:
        release.wait(10)
        return FakeEngine()

    app = create_app(Settings(), engine_factory=slow_factory)
    with TestClient(app) as client:
        client.event_hooks["response"].append(spec_hook(openai_spec, []))
        try:
            yield client
        finally:
            release.set()  # before the app shuts down, which waits for the loader thread


def test_service_unavailable_while_loading(loading_client: TestClient) -> None:
    r = loading_client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    with pytest.raises(openai.InternalServerError) as err:
        sdk_for(loading_client).models.list()
    assert err.value.status_code == 503


@pytest.mark.parametrize(
    "error",
    [AuthenticationError("Incorrect API key provided."), QueueFullError(3), ServiceUnavailableError("loading")],
)
def test_every_error_type_renders_in_the_spec_shape(openai_spec: OpenAISpec, error: Exception) -> None:
    assert hasattr(error, "to_dict")
    openai_spec.validate("ErrorResponse", error.to_dict())


def test_spec_validator_catches_a_wrong_body(openai_spec: OpenAISpec) -> None:
    # The fixture that checks every response is only worth something if it can fail.
    with pytest.raises(AssertionError):
        openai_spec.validate("ErrorResponse", {"error": {"message": "m", "type": "t"}})
    with pytest.raises(AssertionError):
        openai_spec.validate("CreateChatCompletionStreamResponse", {"id": "x", "object": "chat.completion.chunk"})
