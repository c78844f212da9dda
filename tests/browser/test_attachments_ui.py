"""Text attachments in chat: the file's text and name reach the request; its token cost comes from
/tokenize before sending; what would not fit the context is refused before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.support import PHONE, PageFactory, csp_violations, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.live]

NOTES = "Shopping list\n- eggs\n- flour with ``` inside\n"


def attach(page: Page, name: str, text: str | bytes, mime: str = "text/plain") -> None:
    data = text.encode() if isinstance(text, str) else text
    page.get_by_test_id("attach-input").set_input_files({"name": name, "mimeType": mime, "buffer": data})


def chat_requests(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.endswith("/v1/chat/completions") else None)
    return seen


def test_a_picked_file_reaches_the_request_with_its_name_and_counted_tokens(
    fake_server: str, open_page: PageFactory, page_errors: list[str]
) -> None:
    page = open_page(fake_server)
    watch_csp(page)
    with page.expect_response("**/tokenize") as counted:
        attach(page, "notes.md", NOTES)
    tokenized: dict[str, Any] = counted.value.json()
    sent_for_counting = json.loads(counted.value.request.post_data or "{}")["content"]
    assert "notes.md" in sent_for_counting and NOTES in sent_for_counting
    chip = page.get_by_test_id("attachment")
    expect(chip).to_contain_text("notes.md")
    # The cost shown is the server's count of exactly the text the model will read.
    expect(chip.get_by_test_id("attachment-tokens")).to_contain_text(f"{len(tokenized['tokens'])} tokens")
    expect(page.get_by_test_id("attachments")).to_contain_text("up to 256.0 KB")

    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("chat-input").fill("What is on it?")
        page.get_by_test_id("chat-input").press("Enter")
    content = req.value.post_data_json["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "text"]
    assert content[0]["text"] == sent_for_counting  # the part is what was counted
    assert content[0]["text"].startswith("File: notes.md\n")
    assert content[1]["text"] == "What is on it?"
    expect(page.get_by_test_id("attachment")).to_have_count(0)  # the composer is empty again
    expect(page.get_by_test_id("send")).to_be_visible()
    # The fake echoes the user turn: the file's text reached the model.
    expect(page.get_by_test_id("message-assistant")).to_contain_text("flour with")
    shown = page.get_by_test_id("message-attachment")
    expect(shown).to_contain_text("notes.md")

    # The file stays with the message: after a reload, and in the next request's history.
    page.reload()
    expect(page.get_by_test_id("message-attachment")).to_contain_text("notes.md")
    page.get_by_test_id("message-attachment").locator("summary").click()
    expect(page.get_by_test_id("message-attachment").locator("pre")).to_contain_text("- eggs")
    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("chat-input").fill("and then?")
        page.get_by_test_id("chat-input").press("Enter")
    first_turn = req.value.post_data_json["messages"][0]
    assert first_turn["content"][0]["text"] == sent_for_counting
    expect(page.get_by_test_id("send")).to_be_visible()
    with page.expect_download() as info:
        page.get_by_test_id("export-markdown").click()
    assert NOTES in Path(info.value.path()).read_text(encoding="utf-8")
    assert page_errors == []
    assert csp_violations(page) == []


def test_a_dropped_file_is_attached_and_can_be_removed(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    drop = page.evaluate_handle(
        "() => { const dt = new DataTransfer();"
        " dt.items.add(new File(['city,country\\nParis,France\\n'], 'cities.csv', {type: 'text/csv'})); return dt; }"
    )
    page.dispatch_event("#composer", "dragover", {"dataTransfer": drop})
    expect(page.get_by_test_id("drop-hint")).to_contain_text("Drop a text file")
    page.dispatch_event("#composer", "drop", {"dataTransfer": drop})
    expect(page.get_by_test_id("attachment")).to_contain_text("cities.csv")
    expect(page.get_by_test_id("drop-hint")).to_be_hidden()
    # A file alone (no typed text) can be sent.
    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("send").click()
    content = req.value.post_data_json["messages"][-1]["content"]
    assert len(content) == 1 and "Paris,France" in content[0]["text"]
    expect(page.get_by_test_id("conversation-title").first).to_have_text("cities.csv")
    expect(page.get_by_test_id("send")).to_be_visible()
    attach(page, "other.txt", "something")
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    page.get_by_test_id("attachment-remove").click()
    expect(page.get_by_test_id("attachment")).to_have_count(0)


def test_what_would_not_fit_is_refused_before_sending(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    sent = chat_requests(page)
    # The fake server's context is 4096 tokens (one per byte): 5000 bytes cannot fit.
    with page.expect_response("**/tokenize"):
        attach(page, "big.txt", "x" * 5000)
    expect(page.get_by_test_id("notice")).to_contain_text("big.txt needs")
    expect(page.get_by_test_id("notice")).to_contain_text("of the context's 4096")
    expect(page.get_by_test_id("attachment")).to_have_count(0)

    # Over the size bound: refused without even counting.
    counted: list[str] = []
    page.on("request", lambda r: counted.append(r.url) if r.url.endswith("/tokenize") else None)
    attach(page, "huge.log", "y" * (300 * 1024))
    expect(page.get_by_test_id("notice")).to_contain_text("at most 256.0 KB")
    attach(page, "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", mime="image/png")
    expect(page.get_by_test_id("notice")).to_contain_text("not a UTF-8 text file")
    expect(page.get_by_test_id("attachment")).to_have_count(0)
    assert counted == []

    # Two files that fit one by one but not together: the second is refused.
    attach(page, "half.txt", "h" * 2500)
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    attach(page, "other-half.txt", "o" * 2500)
    expect(page.get_by_test_id("notice")).to_contain_text("other-half.txt needs")
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    assert sent == []  # nothing reached the chat endpoint


def test_attachments_at_phone_width_in_the_dark(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server, viewport=PHONE, color_scheme="dark")
    expect(page.get_by_test_id("attach")).to_be_visible()
    attach(page, "a-rather-long-file-name-for-a-phone-screen.md", NOTES)
    expect(page.get_by_test_id("attachment")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
