"""``--state-dir``: the app opens its response store when it starts, shows it on /metrics, closes it
when it stops, and a restart on the same directory finds what was stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from server.state import DB_FILE, ResponseStore, StateStoreError, StoredResponse


def stored(n: int) -> StoredResponse:
    rid = f"resp_{n}"
    item = {"id": f"msg_{n}", "type": "message", "role": "user", "content": "hi"}
    return StoredResponse(rid, None, 1_700_000_000, "fake", None, {"id": rid, "object": "response"}, [item], [item])


def store_of(client: TestClient) -> ResponseStore:
    store = client.app.state.llamaserve.responses  # type: ignore[attr-defined]
    assert isinstance(store, ResponseStore)
    return store


def gauge(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not on /metrics")


def test_a_restarted_app_finds_the_responses_it_stored(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=str(tmp_path / "state")), engine=FakeEngine())
    with TestClient(app) as client:
        store = store_of(client)
        assert store.path == tmp_path / "state" / DB_FILE
        for n in range(3):
            store.put(stored(n))
        assert gauge(client, "llamaserve_responses_stored") == 3
        assert gauge(client, "llamaserve_responses_stored_bytes") == store.bytes_used() > 0
    with pytest.raises(StateStoreError, match="closed"):  # closed when the app stopped
        store.count()
    again = create_app(Settings(state_dir=str(tmp_path / "state")), engine=FakeEngine())
    with TestClient(again) as client:
        assert store_of(client).get("resp_1", None) == stored(1)
        assert gauge(client, "llamaserve_responses_stored") == 3


def test_the_bounds_come_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), responses_max_bytes=1)
    with TestClient(create_app(settings, engine=FakeEngine())) as client:
        store = store_of(client)
        store.put(stored(1))
        store.put(stored(2))  # over one byte: only the newest stays
        assert [n for n in (1, 2) if store.get(f"resp_{n}", None)] == [2]


def test_tests_keep_state_in_memory_by_default() -> None:
    # The suite's conftest sets LLAMASERVE_STATE_DIR=:memory:, so no test writes into a home.
    with TestClient(create_app(Settings(), engine=FakeEngine())) as client:
        assert store_of(client).path is None
        assert gauge(client, "llamaserve_responses_stored") == 0
