"""Prompt progress in the UI: a bar while the prompt is read, "waiting for a slot (position N)" while queued.

Screenshots go to tests/browser/artifacts/; docs/web-ui-progress.png in the README is a copy of
progress-chat-desktop-light.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.browser.support import PHONE, PageFactory, scripted_reply
from tests.helpers.live import live_server

pytestmark = [pytest.mark.browser, pytest.mark.live]

LONG_PROMPT = "Summarise this report in one line. " + "The quarterly figures rose again in every region. " * 80

# Records every value the bar shows, and whether a reply token was on screen by then.
RECORD_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    for (const bar of document.querySelectorAll('[data-testid="prompt-progress"]')) {
      if (bar.hidden) continue;
      const body = bar.parentElement.querySelector('[data-testid="message-body"]');
      const text = body ? body.textContent.replace(/[●\\s]/g, "") : document.querySelector("#completion-text").value;
      const key = (bar.dataset.state || "") + ":" + (bar.dataset.position || bar.dataset.processed || "");
      const seen = window.__progress;
      if (!seen.length || seen[seen.length - 1].key !== key) {
        seen.push({ key, state: bar.dataset.state, processed: Number(bar.dataset.processed),
                    total: Number(bar.dataset.total), position: Number(bar.dataset.position), text });
      }
    }
  }).observe(document.body, { subtree: true, childList: true, attributes: true });
}"""


SUMMARY = "Figures rose in every region."


def reply(prompt: str) -> str:
    return SUMMARY if "Summarise this report" in prompt else scripted_reply(prompt)


@pytest.fixture(scope="module")
def slow_prefill_server() -> Iterator[str]:
    """One slot, 64-token steps of 20 ms: a 4000-byte prompt takes over a second to read."""
    engine = FakeEngine(reply=reply, n_slots=1, n_ctx_per_seq=16384, n_batch=64, step_delay=0.02)
    with live_server(create_app(Settings(max_queue=8), engine=engine)) as url:
        yield url


def progress_seen(page: Page) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = page.evaluate("window.__progress")
    return seen


def reading_values(seen: list[dict[str, Any]]) -> list[int]:
    return [s["processed"] for s in seen if s["state"] == "reading"]


def test_chat_shows_the_prompt_being_read_before_the_first_token(
    slow_prefill_server: str, open_page: PageFactory, artifacts: Path, page_errors: list[str]
) -> None:
    page = open_page(slow_prefill_server)
    page.evaluate(RECORD_PROGRESS)
    page.get_by_test_id("chat-input").fill(LONG_PROMPT)
    page.get_by_test_id("chat-input").press("Enter")
    bar = page.get_by_test_id("message-assistant").get_by_test_id("prompt-progress")
    expect(bar).to_be_visible(timeout=10_000)
    expect(bar.get_by_test_id("prompt-progress-label")).to_contain_text("Reading the prompt")
    page.wait_for_function("() => (window.__progress || []).filter(s => s.processed >= 1500).length > 0")
    page.screenshot(path=str(artifacts / "progress-chat-desktop-light.png"))
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)
    expect(bar).to_be_hidden()  # gone once the reply streams
    seen = progress_seen(page)
    values = reading_values(seen)
    assert len(set(values)) >= 5 and values == sorted(values)  # it moved, forwards only
    assert all(s["text"] == "" for s in seen)  # every value was shown before the first token
    assert values[-1] <= seen[-1]["total"] and seen[-1]["total"] > len(LONG_PROMPT)
    assert page.get_by_test_id("message-assistant").get_by_test_id("message-body").inner_text() == SUMMARY
    assert page_errors == []


def test_a_queued_request_shows_its_position_then_runs(
    slow_prefill_server: str, open_page: PageFactory, artifacts: Path, page_errors: list[str]
) -> None:
    holder = open_page(slow_prefill_server)
    holder.get_by_test_id("chat-input").fill("a slow one, please")
    holder.get_by_test_id("chat-input").press("Enter")
    expect(holder.get_by_test_id("message-assistant").get_by_test_id("message-body")).to_contain_text("This reply")
    waiter = open_page(slow_prefill_server)
    waiter.evaluate(RECORD_PROGRESS)
    waiter.get_by_test_id("chat-input").fill("Am I next?")
    waiter.get_by_test_id("chat-input").press("Enter")
    label = waiter.get_by_test_id("message-assistant").get_by_test_id("prompt-progress-label")
    expect(label).to_have_text("Waiting for a slot (position 1)", timeout=10_000)
    waiter.screenshot(path=str(artifacts / "progress-queued-desktop-light.png"))
    holder.get_by_test_id("stop").click()
    expect(waiter.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)
    answer = waiter.get_by_test_id("message-assistant").get_by_test_id("message-body")
    assert answer.inner_text() == "You said: Am I next?"
    seen = progress_seen(waiter)
    assert seen[0]["state"] == "queued" and seen[0]["position"] == 1
    assert page_errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_completion_mode_shows_the_bar_at_phone_width(
    slow_prefill_server: str, open_page: PageFactory, artifacts: Path, scheme: str
) -> None:
    page = open_page(slow_prefill_server, viewport=PHONE, color_scheme=scheme)
    page.get_by_test_id("mode-completion").click()
    page.evaluate(RECORD_PROGRESS)
    page.get_by_test_id("completion-text").fill(f"({scheme}) {LONG_PROMPT}\nIn one line:")  # no cached prefix
    page.get_by_test_id("generate").click()
    bar = page.get_by_test_id("completion-view").get_by_test_id("prompt-progress")
    expect(bar).to_be_visible(timeout=10_000)
    page.wait_for_function("() => (window.__progress || []).filter(s => s.processed >= 1000).length > 0")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(artifacts / f"progress-completion-phone-{scheme}.png"))
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=30_000)
    expect(bar).to_have_count(0)
    assert len(set(reading_values(progress_seen(page)))) >= 3
