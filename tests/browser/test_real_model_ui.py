"""The UI against the real llama.cpp engine on the bundled SmolLM2: chat and completion end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from server.api.app import create_app
from server.settings import Settings
from tests.browser.support import PageFactory, csp_violations, watch_csp
from tests.helpers.live import live_server

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.model]


@pytest.fixture(scope="module")
def real_server() -> Iterator[str]:
    try:
        from server.engine.llama.model_files import bundled_model_path

        bundled_model_path()
    except (ImportError, FileNotFoundError):
        pytest.skip("the bundled SmolLM2 GGUF is not installed")
    # No engine given: the app's lifespan loads the bundled model, as `llamaserve` does.
    settings = Settings(parallel=1, ctx_size=1024, batch_size=256, threads=2, max_queue=4)
    with live_server(create_app(settings)) as url:
        yield url


def test_real_model_chat_and_completion(real_server: str, open_page: PageFactory, page_errors: list[str]) -> None:
    page = open_page(real_server)
    expect(page.get_by_test_id("setting-model")).not_to_have_value("")
    page.get_by_test_id("setting-max_tokens").fill("24")
    page.get_by_test_id("setting-temperature").fill("0")
    page.get_by_test_id("chat-input").fill("What is the capital of France?")
    page.get_by_test_id("chat-input").press("Enter")
    reply = page.get_by_test_id("message-assistant")
    expect(page.get_by_test_id("regenerate")).to_be_visible(timeout=120_000)  # the reply is complete
    expect(reply.get_by_test_id("reply-stats")).to_contain_text("tok/s")
    text = reply.get_by_test_id("message-body").inner_text().strip()
    assert text, "the model's reply is empty"
    assert "\ufffd" not in text  # multi-byte tokens were joined, not shown as broken UTF-8
    expect(reply.get_by_test_id("message-error")).to_have_count(0)
    expect(page.get_by_test_id("context-usage")).to_contain_text("/ 1024 tokens")

    page.get_by_test_id("mode-completion").click()
    area = page.get_by_test_id("completion-text")
    area.fill("The days of the week are Monday, Tuesday,")
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=120_000)  # the generation is complete
    expect(page.get_by_test_id("completion-stats")).to_contain_text("tokens")
    value = area.input_value()
    assert value.startswith("The days of the week are Monday, Tuesday,")
    assert len(value) > len("The days of the week are Monday, Tuesday,")
    assert page_errors == []


def test_real_model_token_probabilities_and_continuing_from_an_alternative(
    real_server: str, open_page: PageFactory, page_errors: list[str], artifacts: Path
) -> None:
    page = open_page(real_server)
    watch_csp(page)
    page.get_by_test_id("setting-max_tokens").fill("16")
    page.get_by_test_id("setting-temperature").fill("0")
    page.get_by_test_id("mode-completion").click()
    page.get_by_test_id("show-probabilities").check()
    prompt = "The days of the week are Monday, Tuesday,"
    page.get_by_test_id("completion-text").fill(prompt)
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=120_000)
    tokens = page.get_by_test_id("token")
    assert tokens.count() >= 8
    probs = [float(t.get_attribute("data-prob") or "nan") for t in tokens.all()]
    assert all(0 < p <= 1 for p in probs)
    assert len(set(probs)) > 1  # the model's own probabilities, not one constant
    texts = [t.text_content() or "" for t in tokens.all()]
    expect(page.get_by_test_id("completion-tokens")).to_have_text(prompt + "".join(texts))

    # Temperature 0: each token is its own most likely alternative; up to ten are shown, best first.
    tokens.nth(2).hover()
    alternatives = page.get_by_test_id("token-popover").get_by_test_id("token-alternative")
    expect(alternatives.first).to_be_visible()
    assert 5 < alternatives.count() <= 10
    assert alternatives.first.get_attribute("data-text") == texts[2]
    assert alternatives.first.get_attribute("aria-selected") == "true"
    shares = [float((a.locator(".alt-p").text_content() or "0").strip("<%")) for a in alternatives.all()]
    assert shares == sorted(shares, reverse=True)
    page.screenshot(path=str(artifacts / "probabilities-real-model-desktop-light.png"))

    # Picking the second: the text changes at that token and the continuation starts from it.
    choice = alternatives.nth(1).get_attribute("data-text") or ""
    assert choice and choice != texts[2]
    with page.expect_request("**/v1/completions") as req:
        alternatives.nth(1).click()
    edited = prompt + texts[0] + texts[1] + choice
    assert req.value.post_data_json["prompt"] == edited
    assert req.value.post_data_json["logprobs"] == 10
    expect(page.get_by_test_id("undo")).to_be_enabled(timeout=120_000)
    expect(page.get_by_test_id("completion-stats")).to_contain_text("tokens")
    assert (page.get_by_test_id("completion-tokens").text_content() or "").startswith(edited)
    assert page.get_by_test_id("token").nth(2).text_content() == choice
    page.get_by_test_id("undo").click()
    expect(page.get_by_test_id("completion-tokens")).to_have_text(prompt + "".join(texts))
    assert page_errors == []
    assert csp_violations(page) == []
