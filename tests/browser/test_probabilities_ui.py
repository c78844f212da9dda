"""Completion mode's probability view (fake engine): tinted tokens, alternatives, continue from one, undo."""

from __future__ import annotations

import math

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import (
    COMPLETION_CONTINUATION,
    DESSERT_CONTINUATION,
    PHONE,
    PageFactory,
    csp_violations,
    watch_csp,
)

pytestmark = [pytest.mark.browser, pytest.mark.live]

# The fake engine gives each token logprob -0.25 and one alternative, the next byte, at -1.5.
TOKEN_P = f"{math.exp(-0.25):.4f}"


def probabilities_on(page: Page) -> None:
    page.get_by_test_id("mode-completion").click()
    page.get_by_test_id("show-probabilities").check()
    expect(page.get_by_test_id("probability-legend")).to_be_visible()


def complete_with_probabilities(page: Page, text: str) -> None:
    """Probabilities on, ``text`` generated from, and the generation over (undo becomes possible)."""
    probabilities_on(page)
    page.get_by_test_id("completion-text").fill(text)
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("undo")).to_be_enabled()


def test_tokens_carry_probabilities_and_an_alternative_continues_from_there(
    fake_server: str, open_page: PageFactory, page_errors: list[str]
) -> None:
    page = open_page(fake_server)
    watch_csp(page)
    probabilities_on(page)
    page.get_by_test_id("completion-text").fill("Four")
    with page.expect_request("**/v1/completions") as first:
        page.get_by_test_id("generate").click()
    assert first.value.post_data_json["logprobs"] == 10  # the most the server gives
    tokens = page.get_by_test_id("token")
    expect(tokens).to_have_count(len(COMPLETION_CONTINUATION))
    expect(page.get_by_test_id("undo")).to_be_enabled()
    view = page.get_by_test_id("completion-tokens")
    expect(view).to_have_text("Four" + COMPLETION_CONTINUATION)  # the prompt, then the tokens
    expect(page.get_by_test_id("completion-text")).to_be_hidden()
    assert tokens.nth(1).get_attribute("data-prob") == TOKEN_P
    assert tokens.nth(1).get_attribute("data-band") == "3"  # 50..80 %

    # Hover shows the alternatives, best first, with percentages.
    tokens.nth(1).hover()  # "s" of " score"
    alternatives = page.get_by_test_id("token-popover").get_by_test_id("token-alternative")
    expect(alternatives).to_have_count(2)
    expect(alternatives.nth(0)).to_contain_text("s")
    expect(alternatives.nth(0)).to_contain_text("77.9%")
    expect(alternatives.nth(1)).to_contain_text("t")
    expect(alternatives.nth(1)).to_contain_text("22.3%")

    # Picking one replaces that token, drops what followed, and continues from the edited prefix.
    with page.expect_request("**/v1/completions") as second:
        alternatives.nth(1).click()
    assert second.value.post_data_json["prompt"] == "Four t"
    expect(view).to_have_text("Four t" + COMPLETION_CONTINUATION)
    expect(page.get_by_test_id("undo")).to_be_enabled()
    expect(tokens).to_have_count(2 + len(COMPLETION_CONTINUATION))  # " ", the pick, then the new ones
    page.get_by_test_id("completion-stats").filter(has_text="tokens").wait_for()

    # Undo puts the text from before the pick back, tokens and all; a reload keeps them.
    page.get_by_test_id("undo").click()
    expect(view).to_have_text("Four" + COMPLETION_CONTINUATION)
    expect(tokens).to_have_count(len(COMPLETION_CONTINUATION))
    page.reload()
    expect(page.get_by_test_id("completion-tokens")).to_have_text("Four" + COMPLETION_CONTINUATION)
    expect(page.get_by_test_id("token")).to_have_count(len(COMPLETION_CONTINUATION))

    # Edit text brings the text area back; changing the text keeps the tokens before the change.
    page.get_by_test_id("edit-text").click()
    area = page.get_by_test_id("completion-text")
    expect(area).to_be_visible()
    area.fill("Four score and")
    page.get_by_test_id("show-probabilities").uncheck()
    page.get_by_test_id("show-probabilities").check()
    expect(page.get_by_test_id("token")).to_have_count(len(" score and"))
    assert page_errors == []
    assert csp_violations(page) == []


def test_alternatives_by_keyboard(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    complete_with_probabilities(page, "Four")
    first = page.get_by_test_id("token").first
    first.focus()
    assert first.get_attribute("tabindex") == "0"  # one tab stop for the whole text
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("token").nth(2)).to_be_focused()  # "c" of " score"
    page.keyboard.press("Enter")
    popover = page.get_by_test_id("token-popover")
    expect(popover).to_be_visible()
    expect(popover.get_by_test_id("token-alternative").first).to_be_focused()
    page.keyboard.press("Escape")  # closes the alternatives, and focus goes back to the token
    expect(popover).to_have_count(0)
    expect(page.get_by_test_id("token").nth(2)).to_be_focused()
    page.keyboard.press(" ")
    page.keyboard.press("ArrowDown")
    expect(popover.get_by_test_id("token-alternative").nth(1)).to_be_focused()
    with page.expect_request("**/v1/completions") as req:
        page.keyboard.press("Enter")
    assert req.value.post_data_json["prompt"] == "Four sd"  # "c" + 1 is "d"
    expect(page.get_by_test_id("undo")).to_be_enabled()
    page.get_by_test_id("token").first.focus()
    with page.expect_request("**/v1/completions") as req:
        page.keyboard.press("Control+Enter")  # continues the whole text, as in the text area
    assert req.value.post_data_json["prompt"] == "Four sd" + COMPLETION_CONTINUATION


def test_tokens_stream_and_can_be_inspected_mid_generation(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    probabilities_on(page)
    page.get_by_test_id("setting-max_tokens").fill("2000")
    page.get_by_test_id("completion-text").fill("A slow story:")
    page.get_by_test_id("generate").click()
    tokens = page.get_by_test_id("token")
    expect(tokens.nth(20)).to_be_visible()
    expect(page.get_by_test_id("completion-stop")).to_be_visible()  # still generating
    tokens.nth(3).hover()
    expect(page.get_by_test_id("token-alternative")).to_have_count(2)
    # Picking while it streams stops that generation and continues from the pick.
    with page.expect_request("**/v1/completions") as req:
        page.get_by_test_id("token-alternative").nth(1).click()
    prompt = req.value.post_data_json["prompt"]
    assert prompt.startswith("A slow story:") and len(prompt) == len("A slow story:") + 4
    page.get_by_test_id("completion-stop").click()
    expect(page.get_by_test_id("generate")).to_be_visible()


def test_probabilities_at_phone_width_in_the_dark(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server, viewport=PHONE, color_scheme="dark")
    watch_csp(page)
    complete_with_probabilities(page, "Four")
    page.get_by_test_id("token").last.click()  # a tap pins the alternatives open
    popover = page.get_by_test_id("token-popover")
    expect(popover).to_be_visible()
    box = popover.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_test_id("server-status").click()  # a tap elsewhere closes a pinned popover
    expect(popover).to_have_count(0)
    assert csp_violations(page) == []


def test_text_held_back_for_a_stop_string_still_splits_into_its_tokens(
    fake_server: str, open_page: PageFactory
) -> None:
    page = open_page(fake_server)
    page.get_by_test_id("setting-stop").fill("and x")  # " and " waits to see whether the stop follows
    complete_with_probabilities(page, "Four")
    expect(page.get_by_test_id("completion-tokens")).to_have_text("Four" + COMPLETION_CONTINUATION)
    texts = page.get_by_test_id("token").all_text_contents()
    assert texts == list(COMPLETION_CONTINUATION)  # one token each, the held-back ones too


def test_a_character_split_over_two_tokens_is_one_piece(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    complete_with_probabilities(page, "For dessert:")
    expect(page.get_by_test_id("completion-tokens")).to_have_text("For dessert:" + DESSERT_CONTINUATION)
    texts = page.get_by_test_id("token").all_text_contents()
    assert texts == list(DESSERT_CONTINUATION)  # "è" is one piece, not two broken halves
    page.get_by_test_id("token").nth(3).hover()  # "è": its alternatives are first bytes, not text
    alternatives = page.get_by_test_id("token-alternative")
    expect(alternatives.first).to_be_visible()
    for i in range(alternatives.count()):
        expect(alternatives.nth(i)).to_be_disabled()
    page.get_by_test_id("token").nth(4).hover()  # "m": an ordinary token can be picked
    expect(page.get_by_test_id("token-alternative").nth(1)).to_be_enabled()
