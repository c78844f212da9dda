"""/metrics, the HTTP-level counters and X-Request-Id, in-process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from server.api.app import create_app
from server.api.middleware import RequestContextMiddleware
from server.api.state import AppState
from server.engine.fake import FakeEngine
from server.ops.logs import make_handler
from server.ops.metrics import Metrics
from server.settings import Settings

CHAT = "/v1/chat/completions"
# The ids the README promises to honour, and so the only shape an id we hand out may take.
SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
MESSAGES = [{"role": "user", "content": "hi"}]


def sample(client: TestClient, name: str, **labels: str) -> float | None:
    state: AppState = client.app.state.llamaserve  # type: ignore[attr-defined]
    return state.metrics.registry.get_sample_value(name, labels)


def test_metrics_endpoint_serves_text_and_openmetrics(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "llamaserve_model_info{" in r.text
    assert 'model="fake-model"' in r.text

    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.rstrip().endswith("# EOF")


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    assert client.post(CHAT, json={"messages": MESSAGES}).status_code == 200
    assert client.post(CHAT, json={"messages": MESSAGES, "stream": True}).status_code == 200
    assert client.get("/v1/models/no-such-model").status_code == 404
    assert sample(client, "llamaserve_requests_total", endpoint=CHAT, status="200") == 2
    # The template, not the raw path: one series however many model names are asked for.
    assert sample(client, "llamaserve_requests_total", endpoint="/v1/models/{model_id}", status="404") == 1
    assert sample(client, "llamaserve_request_success_total", model="fake-model", finish_reason="stop") == 2


def test_bad_requests_count_as_rejected_by_reason(client: TestClient) -> None:
    assert client.post(CHAT, json={"messages": "not a list"}).status_code == 400
    assert client.post(CHAT, json={"messages": MESSAGES, "temperature": "hot"}).status_code == 400
    huge = [{"role": "user", "content": "x" * 600}]  # the fixture's context is 512 byte-tokens
    r = client.post(CHAT, json={"messages": huge})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert sample(client, "llamaserve_requests_rejected_total", reason="invalid") == 2
    assert sample(client, "llamaserve_requests_rejected_total", reason="context_overflow") == 1
    assert sample(client, "llamaserve_requests_rejected_total", reason="queue_full") == 0
    assert sample(client, "llamaserve_requests_total", endpoint=CHAT, status="400") == 3


def test_client_request_id_is_echoed(client: TestClient) -> None:
    r = client.post(CHAT, json={"messages": MESSAGES}, headers={"X-Request-Id": "trace-42.abc"})
    assert r.headers["x-request-id"] == "trace-42.abc"


def test_request_id_is_generated_when_missing_or_unsafe(client: TestClient) -> None:
    a = client.get("/health").headers["x-request-id"]
    b = client.get("/health").headers["x-request-id"]
    assert SANE_ID.fullmatch(a) and SANE_ID.fullmatch(b) and a != b
    # An id that would break a log line is replaced by a fresh, sane one, not echoed or trimmed.
    r = client.get("/health", headers={"X-Request-Id": "bad id\twith spaces" + "x" * 200})
    replaced = r.headers["x-request-id"]
    assert SANE_ID.fullmatch(replaced) and replaced not in (a, b)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", CHAT, {"messages": "bad"}, 400),
        ("GET", "/v1/no/such/route", None, 404),
        ("GET", "/v1/models/other", None, 404),
        ("DELETE", CHAT, None, 405),
    ],
)
def test_errors_carry_the_request_id(client: TestClient, method: str, path: str, body: object, status: int) -> None:
    r = client.request(method, path, json=body, headers={"X-Request-Id": "err-1"})
    assert r.status_code == status
    assert r.headers["x-request-id"] == "err-1"


def test_queue_full_429_carries_the_request_id_and_is_counted() -> None:
    # The scheduler refuses before any slot work; one slot, no queue, one request already running.
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.01)
    with TestClient(create_app(Settings(max_queue=0), engine=engine)) as c:
        state: AppState = c.app.state.llamaserve  # type: ignore[attr-defined]
        assert state.registry.loaded() is not None
        with c.stream("POST", CHAT, json={"messages": MESSAGES, "stream": True}) as first:
            for line in first.iter_lines():
                if '"content":"z"' in line:
                    break
            r = c.post(CHAT, json={"messages": MESSAGES}, headers={"X-Request-Id": "busy-1"})
            assert r.status_code == 429
            assert r.headers["x-request-id"] == "busy-1"
        assert sample(c, "llamaserve_requests_rejected_total", reason="queue_full") == 1
        assert sample(c, "llamaserve_requests_total", endpoint=CHAT, status="429") == 1


class BrokenTokenizer(FakeEngine):
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        raise RuntimeError("tokenizer exploded")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_unexpected_500_carries_the_request_id_in_header_and_log(log_lines: io.StringIO) -> None:
    app = create_app(Settings(), engine=BrokenTokenizer())
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(CHAT, json={"messages": MESSAGES}, headers={"X-Request-Id": "boom-7"})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert r.headers["x-request-id"] == "boom-7"
        assert sample(c, "llamaserve_requests_total", endpoint=CHAT, status="500") == 1
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    errors = [rec for rec in records if rec["message"].startswith("unhandled error")]
    assert errors, records
    assert errors[0]["request_id"] == "boom-7"
    assert "tokenizer exploded" in errors[0]["exc_info"]


def test_metrics_behind_api_keys_take_a_bearer_token_as_prometheus_sends_it() -> None:
    app = create_app(Settings(api_keys=["scrape-key"]), engine=FakeEngine())
    with TestClient(app) as c:
        denied = c.get("/metrics", headers={"X-Request-Id": "noauth-1"})
        assert denied.status_code == 401
        assert denied.headers["x-request-id"] == "noauth-1"
        ok = c.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        assert ok.status_code == 200 and 'llamaserve_slots{model="fake-model"} ' in ok.text
        # The key check runs before routing, so the refusal has no route template.
        assert sample(c, "llamaserve_requests_total", endpoint="unrouted", status="401") == 1
        assert sample(c, "llamaserve_requests_total", endpoint="/metrics", status="200") == 1


def test_a_request_is_counted_before_its_last_byte_reaches_the_client() -> None:
    # An app still busy after its answer is out (cleanup, background work): a client that reads
    # /metrics right after its answer must find itself counted, not wait for the app to return.
    metrics = Metrics(process=False)
    labels = {"endpoint": "unrouted", "status": "400"}
    answered = asyncio.Event()
    counted_when_answered: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        await answered.wait()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            counted_when_answered.append(metrics.registry.get_sample_value("llamaserve_requests_total", labels))
            answered.set()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {"type": "http", "headers": [], "path": "/x", "method": "POST"}
    asyncio.run(RequestContextMiddleware(app, metrics)(scope, receive, send))
    assert counted_when_answered == [1.0]
    # Once, not again when the app returns.
    assert metrics.registry.get_sample_value("llamaserve_requests_total", labels) == 1.0
