"""The unprefixed routes llama-server's clients call (``base_url`` without ``/v1``) answer as their
``/v1`` twins: the same bodies, streams and errors, checked against OpenAI's spec as the twins are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.api.conftest import spec_hook
from tests.api.test_embeddings import HashEmbedder
from tests.spec.openapi import OpenAISpec

MODEL = "fake-model"
USER = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def client(openai_spec: OpenAISpec, spec_checks: list[str]) -> Iterator[TestClient]:
    engine = FakeEngine(reply=lambda prompt: "Paris is the capital of France.", n_slots=2, embedder=HashEmbedder())
    with TestClient(create_app(Settings(max_queue=4), engine=engine)) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, spec_checks))
        yield c


@pytest.fixture
def root_sdk(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver", api_key="unused", http_client=client, max_retries=0)


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The body less what differs between any two calls: ids, times, and the second one's cache hit."""
    body = {k: v for k, v in body.items() if k not in ("id", "created")}
    body.get("usage", {}).pop("prompt_tokens_details", None)
    return body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {"model": MODEL, "messages": USER, "temperature": 0}),
        ("/completions", {"model": MODEL, "prompt": "The capital of France is", "temperature": 0}),
        ("/embeddings", {"model": MODEL, "input": ["cat", "dog"]}),
    ],
)
def test_an_unprefixed_post_answers_as_its_v1_twin(
    client: TestClient, spec_checks: list[str], path: str, body: dict[str, Any]
) -> None:
    root, v1 = client.post(path, json=body), client.post("/v1" + path, json=body)
    assert root.status_code == v1.status_code == 200
    assert without_ids(root.json()) == without_ids(v1.json())
    assert len(spec_checks) == 2 and spec_checks[0] == spec_checks[1]  # the unprefixed one was checked too


def test_unprefixed_models_list_and_retrieve(client: TestClient) -> None:
    assert client.get("/models").json() == client.get("/v1/models").json()
    assert client.get(f"/models/{MODEL}").json()["id"] == MODEL
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_the_sdk_without_v1_in_base_url_chats_streams_completes_and_embeds(root_sdk: OpenAI) -> None:
    chat = root_sdk.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == "Paris is the capital of France."
    stream = root_sdk.chat.completions.create(model=MODEL, messages=USER, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Paris is the capital of France."
    assert root_sdk.completions.create(model=MODEL, prompt="Hi", max_tokens=4).choices[0].text
    assert len(root_sdk.embeddings.create(model=MODEL, input="cat").data[0].embedding) == 8
    assert [m.id for m in root_sdk.models.list()] == [MODEL]


def test_unprefixed_errors_keep_openai_shape(root_sdk: OpenAI, client: TestClient) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        root_sdk.chat.completions.create(model=MODEL, messages=USER, temperature=7)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert client.get("/chat/completions").status_code == 405


def test_unprefixed_messages_speak_anthropic(client: TestClient) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "messages": USER}
    direct, v1 = client.post("/messages", json=body), client.post("/v1/messages", json=body)
    assert direct.status_code == 200 and direct.json()["type"] == "message"
    assert direct.json()["content"] == v1.json()["content"]
    refused = client.post("/messages", json={**body, "max_tokens": -1})
    assert refused.status_code == 400 and refused.json()["type"] == "error"
    assert client.post("/messages/count_tokens", json={"model": MODEL, "messages": USER}).json()["input_tokens"] > 0
