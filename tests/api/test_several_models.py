"""Several models from one config: /v1/models lists them, the request's `model` routes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.base import Engine
from server.engine.fake import FakeEngine
from server.settings import Settings, load

CONFIG = """
ctx_size = 512
parallel = 2

[[models]]
alias = "alpha"

[[models]]
alias = "beta"
ctx_size = 256
parallel = 1
"""


def fake_factory(loaded: list[str]) -> object:
    def factory(s: Settings) -> Engine:
        loaded.append(f"{s.alias}:{s.ctx_size}x{s.parallel}")
        return FakeEngine(
            model_id=s.alias or "?",
            reply=lambda prompt, name=s.alias: f"I am {name}.",
            n_ctx_per_seq=s.ctx_size,
            n_slots=s.parallel,
        )

    return factory


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    return load(config_file=config)


@pytest.fixture
def loaded() -> list[str]:
    return []


@pytest.fixture
def client(settings: Settings, loaded: list[str]) -> Iterator[TestClient]:
    app = create_app(settings, engine_factory=fake_factory(loaded))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
        yield c


@pytest.fixture
def sdk(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def test_models_lists_every_configured_model(sdk: OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["alpha", "beta"]
    assert sdk.models.retrieve("beta").id == "beta"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gamma")


def test_requests_are_routed_by_model_name(sdk: OpenAI, loaded: list[str]) -> None:
    for name in ("alpha", "beta", "alpha"):
        reply = sdk.chat.completions.create(model=name, messages=[{"role": "user", "content": "Who are you?"}])
        assert reply.model == name
        assert reply.choices[0].message.content == f"I am {name}."
    # Each model got its own settings: its own context size and slot pool.
    assert loaded == ["alpha:512x2", "beta:256x1"]


def test_streaming_is_routed_too(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(model="beta", messages=[{"role": "user", "content": "Hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "I am beta."


def test_unknown_model_is_404_in_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "gamma", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "model"


def test_context_limit_is_per_model(client: TestClient) -> None:
    long = "word " * 300  # over beta's 256 tokens, under alpha's 512 (the fake engine: one byte, one token)
    r = client.post("/v1/chat/completions", json={"model": "beta", "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_max_loaded_models_loads_on_first_request(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("max_loaded_models = 1\n" + CONFIG)
    loaded: list[str] = []
    app = create_app(load(config_file=config), engine_factory=fake_factory(loaded))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
        assert loaded == ["alpha:512x2"]  # only what fits is loaded at start
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["alpha", "beta"]
        r = c.post("/v1/chat/completions", json={"model": "beta", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "I am beta."
        assert loaded == ["alpha:512x2", "beta:256x1"]
        assert app.state.llamaserve.registry.loaded_ids() == ["beta"]
        health = c.get("/health").json()
        assert health["models"] == ["alpha", "beta"] and health["models_loaded"] == ["beta"]
