"""Property-based requests from the app's own OpenAPI schema (schemathesis + hypothesis).

Every operation gets a bounded number of generated requests, both valid and invalid (the schema's
constraints negated). Whatever arrives, the server answers without a 5xx, and every 4xx is in
its API's error shape: Anthropic's on /v1/messages*, OpenAI's everywhere else. Example counts are
small and fixed so the run stays short and repeatable.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings

# Short replies and a small context keep each generated request cheap; several slots and a queue
# keep the run from answering 429 to itself.
ENGINE = FakeEngine(reply=lambda prompt: "ok then", n_slots=4, n_ctx_per_seq=4096)
APP = create_app(Settings(max_queue=64), engine=ENGINE)

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])

# /metrics answers Prometheus' text format, not JSON; its own tests cover it.
NOT_JSON = {"/metrics"}


def _assert_openai_error(body: Any, where: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: not an OpenAI error: {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err), f"{where}: {err!r}"
    assert isinstance(err["message"], str) and err["message"], where
    assert isinstance(err["type"], str) and err["type"], where


def _assert_anthropic_error(body: Any, where: str) -> None:
    assert isinstance(body, dict) and set(body) == {"type", "error"}, f"{where}: not an Anthropic error: {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"type", "message"}, f"{where}: {err!r}"
    assert isinstance(err["message"], str) and err["message"], where


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible, never flaky
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_4xx_in_its_apis_shape(case: schemathesis.Case) -> None:
    response = case.call()
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:500]}"
    if 400 <= response.status_code < 500 and case.path not in NOT_JSON:
        check = _assert_anthropic_error if case.path.startswith("/v1/messages") else _assert_openai_error
        check(json.loads(response.content), where)
