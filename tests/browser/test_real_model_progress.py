"""The prompt-progress bar against the real llama.cpp engine on the bundled SmolLM2: it moves before the first token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from server.api.app import create_app
from server.settings import Settings
from tests.browser.support import PageFactory
from tests.browser.test_progress_ui import RECORD_PROGRESS, progress_seen, reading_values
from tests.helpers.live import live_server

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.model]

# About 700 tokens: with 32-token steps, some twenty steps of prefill (a few seconds on two busy CPU cores;
# a few-thousand-token prompt takes minutes there once attention over the long prefix dominates).
LONG_PROMPT = "Here are my notes. " + "The quarterly figures rose again in every region of the country. " * 55


@pytest.fixture(scope="module")
def real_server() -> Iterator[str]:
    try:
        from server.engine.llama.model_files import bundled_model_path

        bundled_model_path()
    except (ImportError, FileNotFoundError):
        pytest.skip("the bundled SmolLM2 GGUF is not installed")
    settings = Settings(parallel=1, ctx_size=2048, batch_size=32, threads=2, max_queue=4)
    with live_server(create_app(settings)) as url:
        yield url


def test_the_bar_moves_while_the_real_model_reads_a_long_prompt(
    real_server: str, open_page: PageFactory, artifacts: Path, page_errors: list[str]
) -> None:
    page = open_page(real_server)
    expect(page.get_by_test_id("setting-model")).not_to_have_value("")
    page.get_by_test_id("setting-max_tokens").fill("4")
    page.get_by_test_id("setting-temperature").fill("0")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_test_id("chat-input").fill(LONG_PROMPT)
    page.get_by_test_id("chat-input").press("Enter")
    bar = page.get_by_test_id("message-assistant").get_by_test_id("prompt-progress")
    expect(bar).to_be_visible(timeout=60_000)
    page.wait_for_function("() => (window.__progress || []).filter(s => s.state === 'reading').length >= 3")
    page.screenshot(path=str(artifacts / "progress-real-model.png"))
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=240_000)
    seen = progress_seen(page)
    values = reading_values(seen)
    assert len(set(values)) >= 2 and values == sorted(values)  # it moved, forwards only
    assert all(s["text"] == "" for s in seen)  # all before the first token
    total = seen[-1]["total"]
    assert 600 < total < 2048
    assert "Context:" in page.get_by_test_id("context-usage").inner_text()
    assert page_errors == []
