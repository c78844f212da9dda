"""The chat mode of the web UI, driven in headless Chromium against a live server (fake engine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import (
    DESKTOP,
    PHONE,
    XSS_IMG,
    XSS_SCRIPT,
    DialogWatch,
    PageFactory,
)

pytestmark = [pytest.mark.browser, pytest.mark.live]


def send(page: Page, text: str) -> None:
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("chat-input").press("Enter")


def wait_reply_done(page: Page, n: int = 1, timeout: float = 30_000) -> None:
    """The n-th assistant reply has finished: its stats line is filled in and Send is back."""
    expect(page.get_by_test_id("send")).to_be_visible(timeout=timeout)
    expect(page.get_by_test_id("message-assistant")).to_have_count(n)
    expect(page.get_by_test_id("reply-stats").nth(n - 1)).to_contain_text("token")


def health(url: str) -> dict[str, int]:
    body: dict[str, int] = httpx.get(f"{url}/health", timeout=5).json()
    return body


def test_reply_streams_and_renders_markdown_inertly(
    fake_server: str,
    open_page: PageFactory,
    dialogs: DialogWatch,
    page_errors: list[str],
    offsite_requests: list[str],
) -> None:
    page = open_page(fake_server)
    send(page, "Show me some markdown please")
    reply = page.get_by_test_id("message-assistant").last
    # Streaming: the first words are on the page while the reply is still being generated
    # (the fake takes seconds for the whole reply, and Stop shows only while it runs).
    expect(reply.get_by_test_id("message-body")).to_contain_text("Capitals")
    expect(page.get_by_test_id("stop")).to_be_visible()
    assert "second point" not in reply.get_by_test_id("message-body").inner_text()
    wait_reply_done(page)

    body = reply.get_by_test_id("message-body")
    expect(body.locator("h2")).to_have_text("Capitals")
    expect(body.locator("table tr")).to_have_count(3)
    expect(body.locator("td.al-r").first).to_have_text("Paris")
    expect(body.locator("strong")).to_have_text("table")
    expect(body.locator("li")).to_have_count(2)
    expect(body.locator("pre code")).to_have_text('print("hello <world>")')
    # The hostile markup is shown as text and nothing of it became an element.
    expect(body).to_contain_text(XSS_IMG)
    expect(body).to_contain_text(XSS_SCRIPT)
    assert page.locator("#messages img, #messages script, #messages [onerror]").count() == 0
    assert body.locator("a").count() == 0  # a javascript: link is not a link
    page.wait_for_timeout(300)  # an injected handler would have fired by now
    assert dialogs.seen == []
    assert page_errors == []
    assert offsite_requests == []  # no CDN, no fonts, no images from the hostile reply
    expect(reply.get_by_test_id("reply-stats")).to_contain_text("tok/s")
    expect(reply.get_by_test_id("reply-stats")).to_contain_text("TTFT")
    expect(page.get_by_test_id("context-usage")).to_contain_text("tokens")


def test_copy_button_copies_the_code(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=fake_server)
    send(page, "markdown again")
    wait_reply_done(page)
    page.get_by_test_id("copy-code").click()
    expect(page.get_by_test_id("copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == 'print("hello <world>")'


def test_stop_aborts_and_the_server_frees_the_slot(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    send(page, "a slow one please")
    reply = page.get_by_test_id("message-assistant").last
    expect(reply.get_by_test_id("message-body")).to_contain_text("long on purpose")
    assert health(fake_server)["slots_busy"] == 1  # the reply really is being generated now
    page.keyboard.press("Escape")  # Esc stops, like the Stop button
    expect(page.get_by_test_id("send")).to_be_visible()
    expect(reply.get_by_test_id("reply-stats")).to_contain_text("stopped")
    deadline = time.monotonic() + 10
    while health(fake_server)["slots_busy"] != 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.05)
    partial = reply.get_by_test_id("message-body").inner_text()
    assert "long on purpose" in partial
    assert len(partial) < len("This reply is long on purpose, so that it can be stopped halfway. " * 40)

    # The Stop button (not only Esc) aborts too.
    send(page, "another slow one")
    second = page.get_by_test_id("message-assistant").nth(1)
    expect(second.get_by_test_id("message-body")).to_contain_text("long on purpose")
    page.get_by_test_id("stop").click()
    expect(second.get_by_test_id("reply-stats")).to_contain_text("stopped")
    deadline = time.monotonic() + 10
    while health(fake_server)["slots_busy"] != 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.05)


def test_keyboard_shift_enter_is_a_new_line(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    box = page.get_by_test_id("chat-input")
    box.click()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.get_by_test_id("message-user")).to_have_count(0)  # nothing sent yet
    assert box.input_value() == "line one\nline two"
    page.keyboard.press("Enter")
    wait_reply_done(page)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    reply = page.get_by_test_id("message-assistant").get_by_test_id("message-body").inner_text()
    assert reply == "You said: line one\nline two"  # the new line reached the model and came back


def test_system_prompt_reaches_the_model(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.locator("#system-box summary").click()
    page.get_by_test_id("system-prompt").fill("You are a pirate.")
    send(page, "hello")
    wait_reply_done(page)
    expect(page.get_by_test_id("message-assistant")).to_contain_text("Arr, a system prompt reached me.")


def test_regenerate_and_edit_resend(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    send(page, "first question")
    wait_reply_done(page)
    page.get_by_test_id("regenerate").click()
    wait_reply_done(page)  # still one reply: regenerate replaces the last answer
    expect(page.get_by_test_id("message-user")).to_have_count(1)

    send(page, "second question")
    wait_reply_done(page, 2)
    # Editing the first message drops everything after it and answers the edited text.
    page.get_by_test_id("edit-message").first.click()
    page.get_by_test_id("edit-input").fill("edited question")
    page.get_by_test_id("edit-send").click()
    wait_reply_done(page, 1)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("message-user")).to_contain_text("edited question")
    expect(page.get_by_test_id("message-assistant")).to_contain_text("You said: edited question")


def test_conversations_survive_reload_and_can_be_managed(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    send(page, "remember me")
    wait_reply_done(page)
    page.reload()
    expect(page.get_by_test_id("message-user").get_by_test_id("message-body")).to_have_text("remember me")
    expect(page.get_by_test_id("message-assistant")).to_contain_text("You said: remember me")
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    send(page, "second chat")
    wait_reply_done(page)
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("second chat")  # newest first

    # Switch back to the first conversation.
    items.filter(has_text="remember me").get_by_test_id("conversation-title").click()
    expect(page.get_by_test_id("message-user").get_by_test_id("message-body")).to_have_text("remember me")

    # Rename it; the name survives a reload.
    items.filter(has_text="remember me").get_by_test_id("rename-conversation").click()
    page.get_by_test_id("rename-input").fill("Renamed chat")
    page.get_by_test_id("rename-input").press("Enter")
    expect(page.get_by_test_id("conversation-title").filter(has_text="Renamed chat")).to_have_count(1)
    page.reload()
    expect(page.get_by_test_id("conversation-title").filter(has_text="Renamed chat")).to_have_count(1)
    # The conversation that was open is still the open one.
    expect(page.get_by_test_id("message-user").get_by_test_id("message-body")).to_have_text("remember me")

    # Delete takes two clicks.
    renamed = page.get_by_test_id("conversation-item").filter(has_text="Renamed chat")
    renamed.get_by_test_id("delete-conversation").click()
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    renamed.get_by_test_id("delete-conversation").click()
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    expect(page.get_by_test_id("message-user").get_by_test_id("message-body")).to_have_text("second chat")
    page.reload()
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)


def test_export_json_and_markdown(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.locator("#system-box summary").click()
    page.get_by_test_id("system-prompt").fill("Be brief.")
    send(page, "export this")
    wait_reply_done(page)
    with page.expect_download() as info:
        page.get_by_test_id("export-json").click()
    data = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert info.value.suggested_filename == "export-this.json"
    assert data["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "export this"},
        {"role": "assistant", "content": "You said: export this"},
    ]
    with page.expect_download() as info:
        page.get_by_test_id("export-markdown").click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    assert text.startswith("# export this\n")
    assert "## User\n\nexport this\n" in text
    assert "## Assistant\n\nYou said: export this\n" in text


def test_settings_are_sent_and_kept(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.get_by_test_id("setting-temperature").fill("0.3")
    page.get_by_test_id("setting-top_k").fill("7")
    page.get_by_test_id("setting-max_tokens").fill("5")
    page.get_by_test_id("setting-seed").fill("42")
    page.get_by_test_id("setting-stop").fill("END\nSTOP")
    expect(page.get_by_test_id("setting-model")).to_have_value("fake-model")
    with page.expect_request("**/v1/chat/completions") as req:
        send(page, "settings check")
    body = req.value.post_data_json
    assert body is not None
    assert body["temperature"] == 0.3
    assert body["top_k"] == 7
    assert body["max_tokens"] == 5
    assert body["seed"] == 42
    assert body["stop"] == ["END", "STOP"]
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert "top_p" not in body  # empty fields leave the server's defaults
    wait_reply_done(page)
    # max_tokens=5: the fake's reply is cut at five tokens.
    expect(page.get_by_test_id("message-assistant").get_by_test_id("message-body")).to_have_text("You s")
    expect(page.get_by_test_id("reply-stats")).to_contain_text("5 tokens")
    page.reload()
    expect(page.get_by_test_id("setting-temperature")).to_have_value("0.3")
    expect(page.get_by_test_id("setting-stop")).to_have_value("END\nSTOP")


def test_phone_width_is_usable(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server, viewport=PHONE)
    # The panels are drawers on a phone: closed until asked for, so the chat gets the width.
    expect(page.get_by_test_id("sidebar")).to_be_hidden()
    expect(page.get_by_test_id("settings-panel")).to_be_hidden()
    send(page, "hi from a phone")
    wait_reply_done(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    page.get_by_test_id("toggle-sidebar").click()
    expect(page.get_by_test_id("sidebar")).to_be_visible()
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("sidebar")).to_be_hidden()
    page.get_by_test_id("toggle-settings").click()
    expect(page.get_by_test_id("setting-temperature")).to_be_visible()
    assert DESKTOP["width"] > PHONE["width"]


def test_json_mode_asks_for_a_json_object(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.get_by_test_id("setting-json").check()
    with page.expect_request("**/v1/chat/completions") as req:
        send(page, "json please")
    body = req.value.post_data_json
    assert body is not None
    assert body["response_format"] == {"type": "json_object"}
    wait_reply_done(page)


def test_a_refused_request_shows_the_servers_reason(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.get_by_test_id("setting-temperature").fill("7")  # outside OpenAI's 0..2
    send(page, "too hot")
    error = page.get_by_test_id("message-error")
    expect(error).to_contain_text("temperature")
    expect(page.get_by_test_id("send")).to_be_visible()
    # Fix the setting and regenerate: the same question is answered.
    page.get_by_test_id("setting-temperature").fill("0.7")
    page.get_by_test_id("regenerate").click()
    wait_reply_done(page)
    expect(page.get_by_test_id("message-error")).to_have_count(0)
    expect(page.get_by_test_id("message-assistant").get_by_test_id("message-body")).to_have_text("You said: too hot")


def test_desktop_panels_fold_away(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    expect(page.get_by_test_id("sidebar")).to_be_visible()
    expect(page.get_by_test_id("settings-panel")).to_be_visible()
    chat_width = page.get_by_test_id("chat-view").bounding_box()
    page.get_by_test_id("toggle-settings").click()
    page.get_by_test_id("toggle-sidebar").click()
    expect(page.get_by_test_id("settings-panel")).to_be_hidden()
    expect(page.get_by_test_id("sidebar")).to_be_hidden()
    wider = page.get_by_test_id("chat-view").bounding_box()
    assert chat_width is not None and wider is not None
    assert wider["width"] > chat_width["width"] + 400  # the chat takes the room
    page.get_by_test_id("toggle-settings").click()
    expect(page.get_by_test_id("settings-panel")).to_be_visible()
