"""Screenshots of both modes and of each feature at desktop and phone width, kept under
tests/browser/artifacts/.

docs/web-ui-chat.png, docs/web-ui-completion.png, docs/web-ui-branches.png and
docs/web-ui-attachments.png in the README are copies of the desktop light ones;
docs/web-ui-probabilities.png is the real model's (test_real_model_ui.py).
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


SIZES_AND_SCHEMES = [("desktop", "light"), ("desktop", "dark"), ("phone", "light"), ("phone", "dark")]


@pytest.mark.parametrize(("size", "scheme"), SIZES_AND_SCHEMES)
def test_probabilities_screenshot(
    fake_server: str, open_page: PageFactory, artifacts: Path, size: str, scheme: str
) -> None:
    page = open_page(fake_server, viewport=VIEWPORTS[size], color_scheme=scheme)
    page.get_by_test_id("mode-completion").click()
    page.get_by_test_id("show-probabilities").check()
    page.get_by_test_id("completion-text").fill("The Keeper\n\nThe lighthouse keeper")
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=30_000)
    page.get_by_test_id("token").nth(12).click()  # pins its alternatives open
    expect(page.get_by_test_id("token-popover")).to_be_visible()
    assert fits_width(page)
    save(page, artifacts / f"probabilities-{size}-{scheme}.png")


def chat_with_versions(page: Page) -> None:
    for text in ["Summarise these notes", "Which capitals?"]:
        page.get_by_test_id("chat-input").fill(text)
        page.get_by_test_id("chat-input").press("Enter")
        expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)
    page.get_by_test_id("edit-message").nth(1).click()
    page.get_by_test_id("edit-input").fill("Which are the capitals of France, Italy and Spain?")
    page.get_by_test_id("edit-send").click()
    expect(page.get_by_test_id("branch-position")).to_have_text("2/2")
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)


@pytest.mark.parametrize(("size", "scheme"), SIZES_AND_SCHEMES)
def test_branches_screenshot(fake_server: str, open_page: PageFactory, artifacts: Path, size: str, scheme: str) -> None:
    page = open_page(fake_server, viewport=VIEWPORTS[size], color_scheme=scheme)
    chat_with_versions(page)
    page.get_by_test_id("message-user").nth(1).scroll_into_view_if_needed()
    assert fits_width(page)
    save(page, artifacts / f"branches-{size}-{scheme}.png")


@pytest.mark.parametrize(("size", "scheme"), SIZES_AND_SCHEMES)
def test_attachments_screenshot(
    fake_server: str, open_page: PageFactory, artifacts: Path, size: str, scheme: str
) -> None:
    page = open_page(fake_server, viewport=VIEWPORTS[size], color_scheme=scheme)
    notes = b"# Trip notes\n- Paris: Louvre, Orsay\n- Rome: Colosseum\n- Madrid: Prado\n"
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "trip.md", "mimeType": "text/markdown", "buffer": notes}
    )
    expect(page.get_by_test_id("attachment")).to_contain_text("tokens")
    page.get_by_test_id("chat-input").fill("Which museums are on my list?")
    page.get_by_test_id("chat-input").press("Enter")
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=30_000)
    page.get_by_test_id("message-attachment").locator("summary").click()
    cities = b"city,country\nParis,France\nRome,Italy\nMadrid,Spain\n"
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "cities.csv", "mimeType": "text/csv", "buffer": cities}
    )
    expect(page.get_by_test_id("attachment")).to_contain_text("cities.csv")
    page.get_by_test_id("messages").evaluate("box => { box.scrollTop = 0; }")
    assert fits_width(page)
    save(page, artifacts / f"attachments-{size}-{scheme}.png")
