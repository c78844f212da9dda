from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.spec.openapi import OpenAISpec, check_http_response, load_spec


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda prompt: "Paris is the capital of France.", n_slots=2, n_ctx_per_seq=512)


@pytest.fixture(scope="session")
def openai_spec() -> OpenAISpec:
    return load_spec()


@pytest.fixture
def spec_checks(openai_spec: OpenAISpec) -> list[str]:
    """Components each /v1 response of this test was validated against (see ``client``)."""
    return []


def spec_hook(spec: OpenAISpec, checks: list[str]) -> Callable[[httpx.Response], None]:
    """An httpx response hook: every /v1 body and stream chunk must satisfy OpenAI's spec."""

    def hook(response: httpx.Response) -> None:
        response.read()
        request = response.request
        checks.extend(
            check_http_response(
                spec,
                request.method,
                request.url.path,
                request.content,
                response.status_code,
                response.headers.get("content-type", ""),
                response.content,
            )
        )

    return hook


@pytest.fixture
def settings() -> Settings:
    """The app's settings (a test may parametrize ``settings`` to change them)."""
    return Settings(max_queue=4)


STRICT = Settings(max_queue=4, strict_model_name=True)  # an unknown model name is a 404 even with one model


@pytest.fixture
def client(
    engine: FakeEngine, settings: Settings, openai_spec: OpenAISpec, spec_checks: list[str]
) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine)
    with TestClient(app) as c:
        c.event_hooks["response"].append(spec_hook(openai_spec, spec_checks))
        yield c


@pytest.fixture
def sdk(client: TestClient) -> OpenAI:
    # TestClient is an httpx.Client, so the real SDK talks to the app in-process.
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
