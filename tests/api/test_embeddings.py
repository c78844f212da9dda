"""/v1/embeddings through the openai SDK, with a deterministic embedder beside the FakeEngine."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.base import Embedder
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.api.conftest import STRICT

DIM = 8


class HashEmbedder:
    """Mean of per-token pseudo-random vectors, normalised: deterministic, and inputs differ."""

    n_embd = DIM
    n_ctx = 64

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.closed = False

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def embed(self, tokens: Sequence[int]) -> list[float]:
        self.calls.append(list(tokens))
        acc = [0.0] * DIM
        for t in tokens:
            digest = hashlib.sha256(str(t).encode()).digest()
            for i in range(DIM):
                acc[i] += digest[i] / 255 - 0.5
        norm = math.sqrt(sum(v * v for v in acc)) or 1.0
        return [v / norm for v in acc]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def engine(embedder: HashEmbedder) -> FakeEngine:
    """The conftest's engine, made with the embedder: the app gets it through ``make_embedder``."""
    return FakeEngine(reply=lambda prompt: "Paris is the capital of France.", n_slots=2, embedder=embedder)


def test_float_and_base64_agree(client: TestClient, embedder: HashEmbedder, spec_checks: list[str]) -> None:
    body: dict[str, Any] = {"model": "fake-model", "input": ["cat", "dog"]}
    floats = client.post("/v1/embeddings", json=body).json()
    assert floats["object"] == "list" and floats["model"] == "fake-model"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    vec = floats["data"][0]["embedding"]
    assert len(vec) == DIM and abs(sum(v * v for v in vec) - 1) < 1e-6
    b64 = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack(f"<{DIM}f", raw) == pytest.approx(vec, abs=1e-6)
    assert spec_checks == ["CreateEmbeddingResponse", "CreateEmbeddingResponse"]


def test_sdk_embeddings_every_input_form(sdk: OpenAI, embedder: HashEmbedder) -> None:
    one = sdk.embeddings.create(model="fake-model", input="cat")  # the SDK asks for base64 and decodes
    assert len(one.data) == 1 and len(one.data[0].embedding) == DIM
    ids = sdk.embeddings.create(model="fake-model", input=list(b"cat"))
    assert ids.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-6)
    many = sdk.embeddings.create(model="fake-model", input=[list(b"cat"), list(b"dogs")])
    assert len(many.data) == 2 and many.usage.prompt_tokens == 7
    assert many.data[0].embedding != many.data[1].embedding
    assert sdk.embeddings.create(model="fake-model", input="cat", dimensions=DIM).data[0].embedding


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "cat", "dimensions": 4}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [5, 99999]}, "input"),
        ({"input": "x" * 100}, "input"),  # longer than the embedder's context
        ({"input": "cat", "encoding_format": "hex"}, "encoding_format"),
        ({}, "input"),
    ],
)
def test_refusals(client: TestClient, embedder: HashEmbedder, body: dict[str, Any], param: str) -> None:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert embedder.calls == []


@pytest.mark.parametrize("settings", [STRICT], ids=["strict-model-name"])
def test_unknown_model_is_404(sdk: OpenAI, embedder: HashEmbedder) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="text-embedding-3-small", input="cat")


@pytest.mark.parametrize("engine", [FakeEngine()], ids=["without-embedder"])
def test_an_engine_that_cannot_embed_refuses_with_400(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.embeddings.create(model="fake-model", input="cat")
    assert err.value.code == "embeddings_unavailable"


def test_the_embedder_is_made_once_and_closed_with_the_app(engine: FakeEngine, embedder: HashEmbedder) -> None:
    made: list[int] = []
    make = engine.make_embedder

    def counting(n_ctx: int, **kwargs: Any) -> Embedder:
        made.append(n_ctx)
        return make(n_ctx, **kwargs)

    engine.make_embedder = counting  # type: ignore[method-assign]
    with TestClient(create_app(Settings(), engine=engine)) as client:
        for _ in range(3):
            assert client.post("/v1/embeddings", json={"input": "cat"}).status_code == 200
        assert len(made) == 1 and not embedder.closed
    assert embedder.closed


def test_llama_server_content_objects_are_inputs(client: TestClient, embedder: HashEmbedder) -> None:
    plain = client.post("/v1/embeddings", json={"input": ["cat", "dog"]}).json()
    objects = client.post("/embeddings", json={"input": [{"content": "cat"}, {"content": list(b"dog")}]}).json()
    assert [d["embedding"] for d in objects["data"]] == [d["embedding"] for d in plain["data"]]
    assert objects["usage"] == plain["usage"]
    one = client.post("/v1/embeddings", json={"input": {"content": "cat"}}).json()
    assert one["data"][0]["embedding"] == plain["data"][0]["embedding"]
    for bad in ({"content": "cat", "extra": 1}, [{"text": "cat"}], [1, "cat"], {"content": ""}):
        r = client.post("/v1/embeddings", json={"input": bad})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("input"), (bad, r.text)


def test_pooling_none_is_refused_with_a_clear_message(engine: FakeEngine, embedder: HashEmbedder) -> None:
    with TestClient(create_app(Settings(pooling="none"), engine=engine)) as client:
        r = client.post("/v1/embeddings", json={"input": "cat"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "pooling_none"
        assert "--pooling" in r.json()["error"]["message"] and not embedder.calls


@pytest.mark.parametrize("pooling", ["cls", "last", None])
def test_pooling_reaches_the_engine(engine: FakeEngine, pooling: str | None) -> None:
    asked: list[object] = []
    make = engine.make_embedder

    def recording(n_ctx: int, **kwargs: Any) -> Embedder:
        asked.append(kwargs.get("pooling"))
        return make(n_ctx, **kwargs)

    engine.make_embedder = recording  # type: ignore[method-assign]
    with TestClient(create_app(Settings(pooling=pooling), engine=engine)) as client:  # type: ignore[arg-type]
        assert client.post("/v1/embeddings", json={"input": "cat"}).status_code == 200
    assert asked == [pooling]
