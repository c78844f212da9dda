"""Priority and per-key fair share over HTTP: the field, the key's defaults, the per-key 429, the metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.security import key_id
from server.api.state import AppState
from server.engine.fake import FakeEngine
from server.settings import KeyConfig, Settings

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
BATCH_KEY, UI_KEY = "sk-batch-secret", "sk-ui-secret"


def sample(client: TestClient, name: str, **labels: str) -> float | None:
    state: AppState = client.app.state.llamaserve  # type: ignore[attr-defined]
    return state.metrics.registry.get_sample_value(name, labels)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def streaming(client: TestClient, key: str, **body: object) -> Iterator[None]:
    """A stream that has started (status 200, its first chunk read): it holds its place meanwhile."""
    with client.stream("POST", CHAT, json={"messages": MESSAGES, "stream": True, **body}, headers=auth(key)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: dropping the iterator would close the stream
        next(lines)
        yield


def app_client(**settings: object) -> TestClient:
    # One slot and a reply that runs for minutes: whatever comes second waits for the slot.
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.005)
    keys = [KeyConfig(key=BATCH_KEY, priority=10), KeyConfig(key=UI_KEY, weight=2)]
    return TestClient(create_app(Settings(keys=keys, **settings), engine=engine))  # type: ignore[arg-type]


def test_priority_is_checked_like_every_field() -> None:
    with TestClient(create_app(Settings(), engine=FakeEngine())) as c:
        ok = c.post(CHAT, json={"messages": MESSAGES, "priority": -5, "max_tokens": 2})
        assert ok.status_code == 200
        for bad in ("soon", 2**40, 1.5):
            r = c.post(CHAT, json={"messages": MESSAGES, "priority": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == "priority", bad
        assert c.post("/v1/completions", json={"prompt": "x", "priority": 3, "max_tokens": 2}).status_code == 200


def test_a_keys_default_priority_and_the_fields_own_land_in_their_queue_time_class() -> None:
    with app_client() as c:
        assert c.post(CHAT, json={"messages": MESSAGES, "max_tokens": 1}, headers=auth(BATCH_KEY)).status_code == 200
        body = {"messages": MESSAGES, "max_tokens": 1, "priority": -1}
        assert c.post(CHAT, json=body, headers=auth(BATCH_KEY)).status_code == 200
        assert c.post(CHAT, json={"messages": MESSAGES, "max_tokens": 1}, headers=auth(UI_KEY)).status_code == 200
        count = "llamaserve_request_queue_time_seconds_count"
        assert sample(c, count, model="fake-model", priority="low") == 1  # the batch key's 10
        assert sample(c, count, model="fake-model", priority="high") == 1  # the field wins over the key
        assert sample(c, count, model="fake-model", priority="normal") == 1


def test_max_queue_per_key_answers_429_with_retry_after_and_other_keys_still_queue() -> None:
    with app_client(max_queue_per_key=2) as c, streaming(c, BATCH_KEY):
        r = c.post(CHAT, json={"messages": MESSAGES, "n": 3}, headers=auth(BATCH_KEY))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "key_queue_full"
        assert int(r.headers["retry-after"]) >= 1
        assert sample(c, "llamaserve_requests_rejected_total", reason="key_queue_full") == 1
        with streaming(c, UI_KEY, n=2):  # another key: accepted, waiting behind the running stream
            deadline = time.monotonic() + 5
            while sample(c, "llamaserve_requests_waiting_by_key", model="fake-model", key=key_id(UI_KEY)) != 2:
                assert time.monotonic() < deadline, "the waiting gauge never showed the key's two choices"
                time.sleep(0.01)
            text = c.get("/metrics", headers=auth(UI_KEY)).text
            assert UI_KEY not in text and BATCH_KEY not in text  # keys appear as their hash only


def test_messages_requests_take_their_keys_default_priority_and_share() -> None:
    # Anthropic's SDK sends its key in x-api-key; the key's priority and per-key queue apply there too.
    with app_client(max_queue_per_key=2) as c:
        body = {"model": "m", "max_tokens": 1, "messages": MESSAGES}
        headers = {"x-api-key": BATCH_KEY, "anthropic-version": "2023-06-01"}
        assert c.post("/v1/messages", json=body, headers=headers).status_code == 200
        count = "llamaserve_request_queue_time_seconds_count"
        assert sample(c, count, model="fake-model", priority="low") == 1  # the batch key's 10, not 0
        assert sample(c, count, model="fake-model", priority="normal") in (None, 0)
