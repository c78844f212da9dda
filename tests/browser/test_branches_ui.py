"""Branching chats: an edit or a regenerate keeps the old version; arrows switch; the branch on screen is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import PHONE, PageFactory, csp_violations, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.live]


def send(page: Page, text: str) -> dict[str, Any]:
    """Sends `text` from the composer; the request body the page posted."""
    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("chat-input").fill(text)
        page.get_by_test_id("chat-input").press("Enter")
    wait_done(page)
    body: dict[str, Any] = req.value.post_data_json
    return body


def wait_done(page: Page) -> None:
    expect(page.get_by_test_id("send")).to_be_visible()
    expect(page.get_by_test_id("reply-stats").last).to_contain_text("token")


def bodies(page: Page, role: str) -> list[str]:
    return page.get_by_test_id(f"message-{role}").get_by_test_id("message-body").all_inner_texts()


def edit(page: Page, index: int, text: str) -> dict[str, Any]:
    page.get_by_test_id("edit-message").nth(index).click()
    page.get_by_test_id("edit-input").fill(text)
    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("edit-send").click()
    wait_done(page)
    body: dict[str, Any] = req.value.post_data_json
    return body


def history(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


def test_an_edit_keeps_both_versions_and_the_request_is_the_branch_on_screen(
    fake_server: str, open_page: PageFactory, page_errors: list[str]
) -> None:
    page = open_page(fake_server)
    watch_csp(page)
    send(page, "first question")
    send(page, "second question")
    body = edit(page, 0, "edited question")
    assert history(body) == [("user", "edited question")]  # nothing of the old branch is sent
    assert bodies(page, "user") == ["edited question"]
    user = page.get_by_test_id("message-user").first
    expect(user.get_by_test_id("branch-position")).to_have_text("2/2")
    expect(user.get_by_test_id("branch-next")).to_be_disabled()

    # Back to the first version: its whole branch, with its later turns, is on screen again.
    user.get_by_test_id("branch-prev").click()
    assert bodies(page, "user") == ["first question", "second question"]
    assert bodies(page, "assistant") == ["You said: first question", "You said: second question"]
    expect(page.get_by_test_id("message-user").first.get_by_test_id("branch-position")).to_have_text("1/2")
    body = send(page, "third question")
    assert history(body) == [
        ("user", "first question"),
        ("assistant", "You said: first question"),
        ("user", "second question"),
        ("assistant", "You said: second question"),
        ("user", "third question"),
    ]

    # A second fork inside the first version travels with it.
    edit(page, 1, "second, edited")
    expect(page.get_by_test_id("message-user").nth(1).get_by_test_id("branch-position")).to_have_text("2/2")
    page.get_by_test_id("message-user").first.get_by_test_id("branch-next").click()
    assert bodies(page, "user") == ["edited question"]
    body = send(page, "follow-up")
    assert history(body) == [
        ("user", "edited question"),
        ("assistant", "You said: edited question"),
        ("user", "follow-up"),
    ]

    # A reload keeps every version; export is the branch on screen.
    page.reload()
    assert bodies(page, "user") == ["edited question", "follow-up"]
    with page.expect_download() as info:
        page.get_by_test_id("export-json").click()
    exported = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))["messages"]
    assert [m["content"] for m in exported if m["role"] == "user"] == ["edited question", "follow-up"]
    page.get_by_test_id("message-user").first.get_by_test_id("branch-prev").click()
    assert bodies(page, "user") == ["first question", "second, edited"]
    expect(page.get_by_test_id("message-user").nth(1).get_by_test_id("branch-position")).to_have_text("2/2")
    page.get_by_test_id("message-user").nth(1).get_by_test_id("branch-prev").click()
    assert bodies(page, "user") == ["first question", "second question", "third question"]
    with page.expect_download() as info:
        page.get_by_test_id("export-markdown").click()
    markdown = Path(info.value.path()).read_text(encoding="utf-8")
    assert "third question" in markdown and "edited" not in markdown
    assert page_errors == []
    assert csp_violations(page) == []


def test_regenerate_keeps_the_old_answer_as_a_version(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    page.get_by_test_id("setting-max_tokens").fill("5")
    send(page, "regenerate me")
    assert bodies(page, "assistant") == ["You s"]
    page.get_by_test_id("setting-max_tokens").fill("")
    with page.expect_request("**/v1/chat/completions") as req:
        page.get_by_test_id("regenerate").click()
    wait_done(page)
    assert history(req.value.post_data_json) == [("user", "regenerate me")]  # the old answer is not sent
    assert bodies(page, "assistant") == ["You said: regenerate me"]
    reply = page.get_by_test_id("message-assistant")
    expect(reply.get_by_test_id("branch-position")).to_have_text("2/2")
    reply.get_by_test_id("branch-prev").click()
    assert bodies(page, "assistant") == ["You s"]
    expect(page.get_by_test_id("message-assistant").get_by_test_id("branch-position")).to_have_text("1/2")
    body = send(page, "next")
    assert history(body)[1] == ("assistant", "You s")


def test_switching_is_off_while_a_reply_streams(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    send(page, "one")
    edit(page, 0, "two")
    page.get_by_test_id("message-user").first.get_by_test_id("branch-prev").click()
    page.get_by_test_id("chat-input").fill("now slow please")
    page.get_by_test_id("chat-input").press("Enter")
    expect(page.get_by_test_id("stop")).to_be_visible()
    expect(page.get_by_test_id("message-user").first.get_by_test_id("branch-next")).to_be_disabled()
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("message-user").first.get_by_test_id("branch-next")).to_be_enabled()


def test_a_conversation_saved_before_branching_still_loads(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server, viewport=PHONE, color_scheme="dark")
    old = [
        {
            "id": "old-1",
            "title": "Saved last year",
            "system": "",
            "updated": 1,
            "messages": [
                {"role": "user", "content": "old question"},
                {"role": "assistant", "content": "old answer", "stats": None},
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    ]
    page.evaluate(
        "(convs) => { localStorage.setItem('llamaserve.conversations.v1', JSON.stringify(convs));"
        " localStorage.setItem('llamaserve.current.v1', JSON.stringify('old-1')); }",
        old,
    )
    page.reload()
    assert bodies(page, "user") == ["old question"]
    assert bodies(page, "assistant") == ["old answer"]
    expect(page.get_by_test_id("branch")).to_have_count(0)  # one version: no arrows
    body = edit(page, 0, "new question")
    assert history(body) == [("user", "new question")]
    expect(page.get_by_test_id("branch-position")).to_have_text("2/2")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_test_id("branch-prev").click()
    assert bodies(page, "assistant") == ["old answer"]
