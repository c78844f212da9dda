"""Screenshots of both modes at desktop and phone width, kept under tests/browser/artifacts/.

docs/web-ui-chat.png and docs/web-ui-completion.png in the README are copies of the desktop ones.
Each shot also checks that the page fits its width (nothing scrolls sideways).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import DESKTOP, PHONE, PageFactory

pytestmark = [pytest.mark.browser, pytest.mark.live]

VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


def fits_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def save(page: Page, path: Path) -> None:
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a real picture, not a blank page


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_chat_screenshot(fake_server: str, open_page: PageFactory, artifacts: Path, size: str, scheme: str) -> None:
    page = open_page(fake_server, viewport=VIEWPORTS[size], color_scheme=scheme)
    page.locator("#system-box summary").click()
    page.get_by_test_id("system-prompt").fill("You are a concise geography tutor. Use tables where they help.")
    page.get_by_test_id("chat-input").fill("Which are the capitals of France, Italy and Spain?")
    page.get_by_test_id("chat-input").press("Enter")
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)
    page.locator("#system-box summary").click()  # fold the system prompt away again
    page.get_by_test_id("chat-input").fill("And Portugal?")
    assert fits_width(page)
    save(page, artifacts / f"chat-{size}-{scheme}.png")


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_completion_screenshot(fake_server: str, open_page: PageFactory, artifacts: Path, size: str) -> None:
    page = open_page(fake_server, viewport=VIEWPORTS[size])
    page.get_by_test_id("mode-completion").click()
    page.get_by_test_id("completion-text").fill("The Keeper\n\nThe lighthouse keeper")
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=30_000)
    assert fits_width(page)
    save(page, artifacts / f"completion-{size}-light.png")
