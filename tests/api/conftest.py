from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda prompt: "Paris is the capital of France.", n_slots=2, n_ctx_per_seq=512)


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    app = create_app(Settings(max_queue=4), engine=engine)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sdk(client: TestClient) -> OpenAI:
    # TestClient is an httpx.Client, so the real SDK talks to the app in-process.
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
