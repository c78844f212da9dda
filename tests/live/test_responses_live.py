"""``/v1/responses`` over a real socket (uvicorn on 127.0.0.1, the fake engine): events arrive as they
are generated and a client that leaves frees its slot; stored responses survive a restart on the same
state directory; ``store: false`` writes nothing; 32 concurrent writers lose and corrupt nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from server.state import ResponseStore
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

REPLY = "abcdefghijklmnopqrst"


def slots_busy(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["slots_busy"])


def stored(state_dir: Path) -> tuple[int, int]:
    """(responses, bytes) in the database, read as a second process would."""
    store = ResponseStore.open(str(state_dir), max_age_days=None, max_bytes=None)
    try:
        return store.count(), store.bytes_used()
    finally:
        store.close()


def test_events_arrive_as_generated_and_leaving_frees_the_slot(tmp_path: Path) -> None:
    engine = FakeEngine(reply=lambda p: REPLY, n_slots=1, step_delay=0.05)
    with (
        live_server(create_app(Settings(state_dir=str(tmp_path)), engine=engine)) as url,
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        arrivals: list[float] = []
        with sdk.responses.stream(model="fake-model", input="hi") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    arrivals.append(time.monotonic())
        assert len(arrivals) == len(REPLY)
        assert arrivals[-1] - arrivals[0] > 0.5  # one token per 50 ms step, not one burst
        with sdk.responses.stream(model="fake-model", input="hi") as stream:
            next(e for e in stream if e.type == "response.output_text.delta")
            assert slots_busy(url) == 1
        deadline = time.monotonic() + 0.5  # the reply has ~19 steps (~1 s) to go
        while slots_busy(url) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slots_busy(url) == 0


def test_state_survives_a_restart_and_store_false_writes_nothing(tmp_path: Path) -> None:
    engine = FakeEngine(reply=lambda p: "Hello Ada." if "Ada" in p else "Hi.", n_slots=2, n_ctx_per_seq=2048)
    settings = Settings(state_dir=str(tmp_path))
    with (
        live_server(create_app(settings, engine=engine)) as url,
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        first = sdk.responses.create(model="fake-model", input="My name is Ada.")
    before = stored(tmp_path)
    assert before[0] == 1
    with (
        live_server(create_app(settings, engine=engine)) as url,
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        again = sdk.responses.retrieve(first.id)
        assert again.model_dump() == first.model_dump()
        follow = sdk.responses.create(model="fake-model", input="Who am I?", previous_response_id=first.id, store=False)
        assert follow.output_text == "Hello Ada."  # the restored conversation reached the model
        with sdk.responses.stream(model="fake-model", input="hi", store=False) as stream:
            stream.get_final_response()
    assert stored(tmp_path) == before  # store: false, streamed or not, left the database as it was


def test_32_concurrent_writers_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    engine = FakeEngine(reply=lambda p: "reply to " + p[-40:], n_slots=8, n_ctx_per_seq=1024)
    n = 32
    app = create_app(Settings(state_dir=str(tmp_path), max_queue=64), engine=engine)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def create(i: int) -> dict[str, object]:
            body = {"model": "fake-model", "input": f"request number {i}", "metadata": {"i": str(i)}}
            r = http.post("/v1/responses", json=body)
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(max_workers=n) as pool:
            made = list(pool.map(create, range(n)))
        assert len({r["id"] for r in made}) == n
        for r in made:
            back = http.get(f"/v1/responses/{r['id']}").json()
            assert back == r  # each reads back exactly as it was answered
            items = http.get(f"/v1/responses/{r['id']}/input_items").json()["data"]
            i = r["metadata"]["i"]  # type: ignore[index]
            assert [p["text"] for p in items[0]["content"]] == [f"request number {i}"]
    assert stored(tmp_path)[0] == n
