"""Readiness and liveness as Kubernetes asks them, on a real uvicorn with the fake engine.

Readiness (/health, /health/ready) is 503 while the model loads and while draining; liveness
(/health/live) stays 200 then, and is 503 only when the engine thread owes a step and has finished
none for --liveness-timeout seconds. A fake engine whose decode blocks stands for a wedged llama.cpp.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from server.api.app import create_app
from server.api.shutdown import drain
from server.engine.base import Engine, StepOutput
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import free_port, live_server

pytestmark = pytest.mark.live

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class WedgeableEngine(FakeEngine):
    """A fake engine whose :meth:`step` blocks while ``wedged`` is set, as a hung decode would."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.wedged = threading.Event()
        self.unwedged = threading.Event()
        self.in_wedged_step = threading.Event()

    def step(self) -> list[StepOutput]:
        if self.wedged.is_set():
            self.in_wedged_step.set()
            self.unwedged.wait(30)
        return super().step()


def chat_in_thread(url: str) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []

    def run() -> None:
        statuses.append(httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, statuses


def poll(url: str, until_status: int, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == until_status or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_a_wedged_engine_fails_liveness_and_recovers_when_it_steps_again() -> None:
    engine = WedgeableEngine(n_slots=2)
    app = create_app(Settings(liveness_timeout=0.5), engine=engine)
    with live_server(app) as url:
        assert httpx.get(f"{url}/health/live").status_code == 200
        engine.wedged.set()
        thread, statuses = chat_in_thread(url)
        assert engine.in_wedged_step.wait(10), "the request never reached the engine"
        stuck = poll(f"{url}/health/live", 503, within=10)
        assert stuck.status_code == 503, stuck.text
        assert stuck.json()["status"] == "stuck"
        assert stuck.json()["stalled_seconds"]["fake-model"] >= 0.5
        # Readiness is a different question: the server is loaded and admitting.
        assert httpx.get(f"{url}/health/ready").status_code == 200
        engine.wedged.clear()
        engine.unwedged.set()
        thread.join(30)
        assert statuses == [200]
        assert httpx.get(f"{url}/health/live").json() == {"status": "alive", "state": "ok"}


def test_an_idle_engine_is_alive_and_a_request_after_long_idle_is_not_taken_for_a_hang() -> None:
    # Each decode takes 0.3 s, under the 1 s timeout; the engine then idles for longer than the timeout.
    engine = FakeEngine(n_slots=1, step_delay=0.3)
    app = create_app(Settings(liveness_timeout=1.0), engine=engine)
    with live_server(app) as url:
        time.sleep(1.5)
        assert httpx.get(f"{url}/health/live").status_code == 200
        thread, statuses = chat_in_thread(url)
        seen = []
        while thread.is_alive():
            seen.append(httpx.get(f"{url}/health/live", timeout=5).status_code)
            time.sleep(0.02)
        assert statuses == [200]
        assert seen and set(seen) == {200}


def test_liveness_timeout_zero_never_reports_stuck() -> None:
    engine = WedgeableEngine(n_slots=1)
    app = create_app(Settings(liveness_timeout=0), engine=engine)
    with live_server(app) as url:
        engine.wedged.set()
        thread, _ = chat_in_thread(url)
        assert engine.in_wedged_step.wait(10)
        time.sleep(0.3)
        assert httpx.get(f"{url}/health/live").status_code == 200
        engine.unwedged.set()
        thread.join(30)


@pytest.fixture
def loading_server() -> Iterator[tuple[str, threading.Event]]:
    """A real server whose model load blocks until the event is set."""
    release = threading.Event()

    def slow_load(settings: Settings) -> Engine:
        release.wait(30)
        return FakeEngine()

    import uvicorn

    app = create_app(Settings(), engine_factory=slow_load)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, release
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_while_loading_the_pod_is_alive_but_not_ready(loading_server: tuple[str, threading.Event]) -> None:
    url, release = loading_server
    deadline = time.monotonic() + 20
    while True:
        try:
            ready = httpx.get(f"{url}/health/ready")
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    assert httpx.get(f"{url}/health").status_code == 503
    assert httpx.get(f"{url}/health/live").json() == {"status": "alive", "state": "loading"}
    release.set()
    assert poll(f"{url}/health/ready", 200, within=20).status_code == 200


def test_while_draining_the_pod_is_alive_but_not_ready() -> None:
    engine = FakeEngine(n_slots=1, step_delay=0.05)
    app = create_app(Settings(), engine=engine)
    with live_server(app) as url:
        thread, statuses = chat_in_thread(url)
        # Drain only once the request holds its slot: one that arrives after the drain began is
        # refused with 503 by design, which is not what this test is about.
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health").json()["slots_busy"] != 1:
            assert time.monotonic() < deadline, "the request never took a slot"
            time.sleep(0.01)
        state = app.state.llamaserve

        def drain_in_own_loop() -> None:
            # What SIGTERM starts in the real server (tests/live/test_shutdown.py sends the signal itself).
            asyncio.run(drain(state, timeout=10))

        drainer = threading.Thread(target=drain_in_own_loop, daemon=True)
        drainer.start()
        ready = poll(f"{url}/health/ready", 503, within=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        live = httpx.get(f"{url}/health/live")
        assert live.status_code == 200 and live.json()["state"] == "draining"
        drainer.join(20)
        thread.join(20)
        assert statuses == [200]  # the request in flight finished during the drain


def test_probes_need_no_api_key() -> None:
    app = create_app(Settings(api_keys=["sk-secret"]), engine=FakeEngine())
    with live_server(app) as url:
        for path in ("/health", "/health/ready", "/health/live"):
            assert httpx.get(f"{url}{path}").status_code == 200, path
        assert httpx.get(f"{url}/v1/models").status_code == 401
