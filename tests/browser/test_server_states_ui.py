"""What the UI shows when the server asks for a key (401) or is full (429)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import Response, expect

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.browser.support import PageFactory, scripted_reply
from tests.helpers.live import live_server

pytestmark = [pytest.mark.browser, pytest.mark.live]

API_KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    engine = FakeEngine(reply=scripted_reply, n_slots=2, step_delay=0.005)
    with live_server(create_app(Settings(api_keys=[API_KEY]), engine=engine)) as url:
        yield url


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[str]:
    """One slot and no queue: a second request while one runs gets a 429."""
    engine = FakeEngine(reply=scripted_reply, n_slots=1, step_delay=0.02)
    with live_server(create_app(Settings(max_queue=0), engine=engine)) as url:
        yield url


@pytest.fixture(scope="module")
def failing_engine() -> FakeEngine:
    return FakeEngine(reply=scripted_reply, n_slots=1, step_delay=0.02)


@pytest.fixture(scope="module")
def failing_server(failing_engine: FakeEngine) -> Iterator[str]:
    with live_server(create_app(Settings(), engine=failing_engine)) as url:
        yield url


def test_an_engine_failure_mid_reply_is_shown(
    failing_server: str, failing_engine: FakeEngine, open_page: PageFactory
) -> None:
    page = open_page(failing_server)
    page.get_by_test_id("chat-input").fill("a slow one")
    page.get_by_test_id("chat-input").press("Enter")
    reply = page.get_by_test_id("message-assistant")
    expect(reply.get_by_test_id("message-body")).to_contain_text("long on purpose")
    failing_engine.fail_next_step = True  # the next decode fails, as a llama.cpp decode error would
    expect(reply.get_by_test_id("message-error")).to_be_visible()
    expect(reply.get_by_test_id("message-error")).to_contain_text("engine failed")
    expect(reply.get_by_test_id("message-body")).to_contain_text("long on purpose")  # the partial text stays
    expect(page.get_by_test_id("send")).to_be_visible()


def test_401_asks_for_the_key_and_then_answers(keyed_server: str, open_page: PageFactory) -> None:
    page = open_page(keyed_server)  # the page itself loads without a key
    prompt = page.get_by_test_id("apikey-prompt")
    expect(prompt).to_be_visible()  # listing the models already needed the key
    expect(prompt).to_contain_text("needs an API key")

    # Sending without a key: no blank failure, the prompt stays and the message waits.
    page.get_by_test_id("chat-input").fill("hello with a key")
    page.get_by_test_id("chat-input").press("Enter")
    expect(prompt).to_be_visible()
    expect(page.get_by_test_id("message-assistant")).to_have_count(0)

    # A wrong key is refused and asked for again.
    page.get_by_test_id("apikey-input").fill("wrong-key")
    page.get_by_test_id("apikey-save").click()
    expect(prompt).to_be_visible()
    expect(page.get_by_test_id("message-assistant")).to_have_count(0)

    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("apikey-input").fill(API_KEY)
        page.get_by_test_id("apikey-save").click()
    assert req.value.headers["authorization"] == f"Bearer {API_KEY}"
    expect(prompt).to_be_hidden()
    expect(page.get_by_test_id("message-assistant").get_by_test_id("message-body")).to_have_text(
        "You said: hello with a key"
    )
    expect(page.get_by_test_id("setting-model")).to_have_value("fake-model")
    expect(page.get_by_test_id("setting-api-key")).to_have_value(API_KEY)


@contextmanager
def slot_taken(url: str) -> Iterator[None]:
    """Hold the only slot with a streaming request until the block ends (then disconnect)."""
    started = threading.Event()
    release = threading.Event()

    def hold() -> None:
        body = {"messages": [{"role": "user", "content": "slow"}], "stream": True}
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data:"):
                    started.set()
                if release.is_set():
                    return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert started.wait(10), "could not occupy the slot"
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def test_429_shows_the_wait_and_retries(one_slot_server: str, open_page: PageFactory) -> None:
    page = open_page(one_slot_server)
    statuses: list[int] = []

    def record(response: Response) -> None:
        if response.url.endswith("/v1/chat/completions"):
            statuses.append(response.status)

    page.on("response", record)
    with slot_taken(one_slot_server):
        page.get_by_test_id("chat-input").fill("are you free?")
        page.get_by_test_id("chat-input").press("Enter")
        notice = page.get_by_test_id("notice")
        expect(notice).to_contain_text("Server busy, retrying in")
        expect(notice).to_have_attribute("data-kind", "wait")
        expect(page.get_by_test_id("server-status")).to_contain_text("1/1 slots busy")
        # It retries after Retry-After and is refused again while the slot stays taken.
        deadline = time.monotonic() + 20
        while statuses.count(429) < 2:
            assert time.monotonic() < deadline, f"no retry after the first 429: {statuses}"
            page.wait_for_timeout(100)
        assert 200 not in statuses
        expect(notice).to_contain_text("Server busy, retrying in")
    # Once the slot is free the retry goes through and the reply arrives.
    expect(page.get_by_test_id("message-assistant").get_by_test_id("message-body")).to_have_text(
        "You said: are you free?", timeout=15_000
    )
    expect(page.get_by_test_id("notice")).to_be_hidden()
    assert statuses[-1] == 200


def test_429_wait_can_be_stopped(one_slot_server: str, open_page: PageFactory) -> None:
    page = open_page(one_slot_server)
    with slot_taken(one_slot_server):
        page.get_by_test_id("chat-input").fill("never mind")
        page.get_by_test_id("chat-input").press("Enter")
        expect(page.get_by_test_id("notice")).to_contain_text("Server busy")
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("notice")).to_be_hidden()
        expect(page.get_by_test_id("send")).to_be_visible()
        expect(page.get_by_test_id("reply-stats")).to_contain_text("stopped")
    assert httpx.get(f"{one_slot_server}/health").json()["requests_waiting"] == 0
