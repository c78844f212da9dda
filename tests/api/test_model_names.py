"""Model names as llama-server's and llamafile's clients send them: over HTTP, with the openai SDK at a
``base_url`` without ``/v1``. One model answers any name; several refuse an unknown one unless
``default_model`` names one; ``-a id,name2`` gives a model more names, listed in ``/v1/models``."""

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
from server.settings import ConfigError, Settings, load
from tests.api.conftest import spec_hook
from tests.spec.openapi import OpenAISpec

HI = [{"role": "user", "content": "Who are you?"}]
SEVERAL = """
[[models]]
alias = "alpha,gpt-4o"
[[models]]
alias = "beta"
"""


def named_fake(s: Settings) -> Engine:
    return FakeEngine(model_id=s.alias or "?", reply=lambda prompt, name=s.alias: f"I am {name}.", n_slots=1)


def serve(settings: Settings, openai_spec: OpenAISpec) -> Iterator[OpenAI]:
    with TestClient(create_app(settings, engine_factory=named_fake)) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, []))
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
        yield OpenAI(base_url="http://testserver", api_key="unused", http_client=c, max_retries=0)


@pytest.fixture
def one(openai_spec: OpenAISpec) -> Iterator[OpenAI]:
    yield from serve(Settings(alias="smol,local"), openai_spec)


def test_one_model_answers_names_apps_send_under_its_real_id(one: OpenAI) -> None:
    for name in ("gpt-3.5-turbo", "local", "smol"):
        reply = one.chat.completions.create(model=name, messages=HI)  # type: ignore[arg-type]
        assert reply.model == "smol" and reply.choices[0].message.content == "I am smol."
    assert one.completions.create(model="davinci-002", prompt="Hi", max_tokens=2).model == "smol"
    assert [(m.id, m.model_extra) for m in one.models.list()] == [("smol", {"aliases": ["local"]})]


def test_strict_model_name_refuses_an_unknown_name(openai_spec: OpenAISpec) -> None:
    for sdk in serve(Settings(alias="smol", strict_model_name=True), openai_spec):
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.chat.completions.create(model="gpt-3.5-turbo", messages=HI)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_found"
        assert sdk.chat.completions.create(model="smol", messages=HI).model == "smol"  # type: ignore[arg-type]


@pytest.mark.parametrize(("extra", "answers"), [("", None), ('default_model = "beta"\n', "beta")])
def test_several_models_404_unless_a_default_model_is_configured(
    tmp_path: Path, openai_spec: OpenAISpec, extra: str, answers: str | None
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(extra + SEVERAL)
    for sdk in serve(load(config_file=config), openai_spec):
        assert sdk.chat.completions.create(model="gpt-4o", messages=HI).model == "alpha"  # type: ignore[arg-type]
        if answers is None:
            with pytest.raises(openai.NotFoundError):
                sdk.chat.completions.create(model="gpt-3.5-turbo", messages=HI)  # type: ignore[arg-type]
        else:
            assert sdk.chat.completions.create(model="gpt-3.5-turbo", messages=HI).model == answers  # type: ignore[arg-type]
        assert [m.id for m in sdk.models.list()] == ["alpha", "beta"]


def test_a_default_model_that_is_not_served_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text('default_model = "gamma"\n' + SEVERAL)
    with pytest.raises(ConfigError, match="'gamma' is none of the"):
        load(config_file=config)
