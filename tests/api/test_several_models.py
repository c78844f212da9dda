"""Several models from one config: /v1/models lists them, the request's `model` routes it."""

from __future__ import annotations

import re
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


GAUGES = (
    "llamaserve_requests_running",
    "llamaserve_requests_waiting",
    "llamaserve_slots",
    "llamaserve_slots_busy",
    "llamaserve_kv_cache_usage_ratio",
)
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as Prometheus reads it: (name, labels in any order) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200
    samples = {}
    for line in r.text.splitlines():
        if match := SAMPLE.match(line):
            name, labels, number = match.groups()
            samples[(name, frozenset(LABEL.findall(labels or "")))] = float(number)
    return samples


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


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


def test_metrics_tell_the_models_apart(client: TestClient) -> None:
    for name in ("alpha", "beta", "beta"):
        r = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
    got = scrape(client)
    success = "llamaserve_request_success_total"
    assert got[series(success, finish_reason="stop", model="alpha")] == 1
    assert got[series(success, finish_reason="stop", model="beta")] == 2
    assert got[series(success, finish_reason="length", model="beta")] == 0
    # Each model's own pool and settings, side by side.
    assert got[series("llamaserve_slots", model="alpha")] == 2
    assert got[series("llamaserve_slots", model="beta")] == 1
    info = "llamaserve_model_info"
    assert got[series(info, model="alpha", quantization="none", n_ctx="512", n_parallel="2", devices="1")] == 1
    assert got[series(info, model="beta", quantization="none", n_ctx="256", n_parallel="1", devices="1")] == 1
    for name in ("alpha", "beta"):
        for gauge in ("llamaserve_requests_running", "llamaserve_requests_waiting", "llamaserve_slots_busy"):
            assert got[series(gauge, model=name)] == 0
    assert got[series("llamaserve_time_to_first_token_seconds_count", model="beta")] == 2
    # The reply's length in tokens (one byte, one token with the fake engine) per request.
    assert got[series("llamaserve_generation_tokens_total", model="alpha")] == len("I am alpha.")
    assert got[series("llamaserve_generation_tokens_total", model="beta")] == 2 * len("I am beta.")
    # HTTP-level series know no model: a refusal may come before the model is known.
    assert got[series("llamaserve_requests_total", endpoint="/v1/chat/completions", status="200")] == 3
    assert got[series("llamaserve_requests_rejected_total", reason="queue_full")] == 0


def test_an_unloaded_models_gauges_leave_metrics_and_its_counters_stay(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("max_loaded_models = 1\n" + CONFIG)
    app = create_app(load(config_file=config), engine_factory=fake_factory([]))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
        before = scrape(c)
        assert before[series("llamaserve_slots", model="alpha")] == 2
        assert series("llamaserve_slots", model="beta") not in before  # not loaded yet
        # Its counters are there from the start at 0, so rate() sees its first request.
        assert before[series("llamaserve_request_success_total", finish_reason="stop", model="beta")] == 0
        r = c.post("/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        # Loading beta unloads alpha (one model at a time).
        r = c.post("/v1/chat/completions", json={"model": "beta", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        assert app.state.llamaserve.registry.loaded_ids() == ["beta"]
        after = scrape(c)
    for gauge in GAUGES:
        assert series(gauge, model="alpha") not in after, gauge
        assert series(gauge, model="beta") in after, gauge
    assert not [key for key in after if key[0] == "llamaserve_model_info" and ("model", "alpha") in key[1]]
    assert (
        after[
            series("llamaserve_model_info", model="beta", quantization="none", n_ctx="256", n_parallel="1", devices="1")
        ]
        == 1
    )
    # What alpha did stays counted: counters and histograms are cumulative.
    assert after[series("llamaserve_request_success_total", finish_reason="stop", model="alpha")] == 1
    assert after[series("llamaserve_time_to_first_token_seconds_count", model="alpha")] == 1
    assert after[series("llamaserve_request_success_total", finish_reason="stop", model="beta")] == 1


def test_template_and_token_routes_route_by_model_and_survive_an_unload(tmp_path: Path) -> None:
    # One model kept loaded: asking for beta unloads alpha, the first (default) model. Every
    # route finds its model the same way, loading it again when it is needed.
    config = tmp_path / "models.toml"
    config.write_text(CONFIG.replace("parallel = 2\n", "parallel = 2\nmax_loaded_models = 1\n", 1))
    loaded: list[str] = []
    app = create_app(load(config_file=config), engine_factory=fake_factory(loaded))  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "Hi"}]
    with TestClient(app) as c:
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
        r = c.post("/apply-template", json={"model": "beta", "messages": messages})
        assert r.status_code == 200 and r.json()["prompt"].endswith("<|im_start|>assistant\n")
        assert c.get("/health").json()["models_loaded"] == ["beta"]
        # No model: the first one, loaded again rather than a 503 because it was unloaded.
        assert c.post("/apply-template", json={"messages": messages}).status_code == 200
        assert c.post("/tokenize", json={"content": "ab"}).json() == {"tokens": [97, 98]}
        assert c.post("/detokenize", json={"model": "beta", "tokens": [104, 105]}).json() == {"content": "hi"}
        for path, body in (("/apply-template", {"messages": messages}), ("/tokenize", {"content": "x"})):
            r = c.post(path, json={**body, "model": "gamma"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", path
    assert loaded == ["alpha:512x2", "beta:256x1", "alpha:512x2", "beta:256x1"]
