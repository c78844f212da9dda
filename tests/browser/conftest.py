"""Headless Chromium (Debian's, via Playwright) against a live llamaserve with the fake engine.

Playwright's own browser download cannot work offline, so the browser is the system Chromium
that scripts/test-deps.sh installs; without it these tests are skipped with that reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.browser.support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DESKTOP, DialogWatch, PageFactory, scripted_reply
from tests.helpers.live import live_server


# Module scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, and every later test that runs asyncio would then fail.
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: run scripts/test-deps.sh (apt-get install chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    """One live server for the module: a fake engine that streams at a human-visible pace."""
    engine = FakeEngine(reply=scripted_reply, n_slots=2, n_ctx_per_seq=4096, step_delay=0.01)
    with live_server(create_app(Settings(max_queue=8), engine=engine)) as url:
        yield url


@pytest.fixture
def dialogs() -> DialogWatch:
    return DialogWatch()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught JavaScript exceptions of every page a test opened."""
    return []


@pytest.fixture
def offsite_requests() -> list[str]:
    """Every request a page made anywhere but its own server: the UI must work offline."""
    return []


@pytest.fixture
def open_page(
    browser: Browser, dialogs: DialogWatch, page_errors: list[str], offsite_requests: list[str]
) -> Iterator[PageFactory]:
    """Open the UI in a fresh browser profile (empty localStorage) and wait until it has loaded."""
    contexts: list[BrowserContext] = []

    def open_(url: str, viewport: dict[str, int] | None = None, color_scheme: str = "light") -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP, color_scheme=color_scheme)  # type: ignore[arg-type]
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", dialogs)
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        page.on(
            "request",
            lambda r: (
                offsite_requests.append(r.url)
                if r.url.startswith(("http:", "https:", "ws:", "wss:")) and not r.url.startswith(url + "/")
                else None
            ),
        )
        page.goto(url + "/")
        page.get_by_test_id("server-status").filter(has_text="ready").wait_for()
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
