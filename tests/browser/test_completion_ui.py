"""Completion mode: one text area that the model continues in place."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import COMPLETION_CONTINUATION, PageFactory

pytestmark = [pytest.mark.browser, pytest.mark.live]


def completion_mode(page: Page) -> None:
    page.get_by_test_id("mode-completion").click()
    expect(page.get_by_test_id("completion-view")).to_be_visible()
    expect(page.get_by_test_id("chat-view")).to_be_hidden()


def test_generate_continues_the_text_in_place_and_undo_restores(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    completion_mode(page)
    area = page.get_by_test_id("completion-text")
    area.fill("Four")
    with page.expect_request("**/v1/completions") as req:
        page.get_by_test_id("generate").click()
    sent = req.value.post_data_json
    assert sent is not None
    assert sent["prompt"] == "Four"
    assert sent["stream"] is True
    expect(area).to_have_value("Four" + COMPLETION_CONTINUATION)
    expect(page.get_by_test_id("generate")).to_be_visible()
    expect(page.get_by_test_id("completion-stats")).to_contain_text("tokens")

    # The text survives a reload, and the mode too.
    page.reload()
    expect(page.get_by_test_id("completion-view")).to_be_visible()
    expect(page.get_by_test_id("completion-text")).to_have_value("Four" + COMPLETION_CONTINUATION)

    # Undo restores the text from before the last generation.
    area = page.get_by_test_id("completion-text")
    area.fill("Once upon a time")
    area.press("Control+Enter")  # the keyboard way to Generate
    expect(area).to_have_value("Once upon a time" + COMPLETION_CONTINUATION)
    page.get_by_test_id("undo").click()
    expect(area).to_have_value("Once upon a time")
    expect(page.get_by_test_id("undo")).to_be_disabled()


def test_stop_in_completion_mode_frees_the_slot(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    completion_mode(page)
    area = page.get_by_test_id("completion-text")
    area.fill("A slow story:")
    page.get_by_test_id("generate").click()
    expect(area).to_have_value(re.compile(r"long on purpose"))
    assert httpx.get(f"{fake_server}/health").json()["slots_busy"] == 1
    page.get_by_test_id("completion-stop").click()
    expect(page.get_by_test_id("completion-stats")).to_contain_text("stopped")
    deadline = time.monotonic() + 10
    while httpx.get(f"{fake_server}/health").json()["slots_busy"] != 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.05)
    text = area.input_value()
    assert text.startswith("A slow story:") and "long on purpose" in text
    page.get_by_test_id("undo").click()
    expect(area).to_have_value("A slow story:")
