"""/dashboard in Chromium: live SVG charts from /metrics under a small load, per model, behind an API key.

Screenshots go to tests/browser/artifacts/; docs/web-ui-dashboard.png in the README is a copy of
dashboard-desktop-light.png.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from server.api.app import create_app
from server.engine.base import Engine
from server.engine.fake import FakeEngine
from server.settings import Settings, load
from tests.browser.support import DESKTOP, PHONE
from tests.helpers.live import live_server

pytestmark = [pytest.mark.browser, pytest.mark.live]

KEY = "dashboard-test-key"
TPS_VALUE = "[data-testid=chart-tokens-per-second] .chart-value"
CHARTS = ("tokens-per-second", "ttft", "inter-token-latency", "queue", "busy-slots", "kv-cache", "cache-hit")
CONFIG = f"""
ctx_size = 2048
parallel = 2
api_keys = ["{KEY}"]

[[models]]
alias = "alpha"

[[models]]
alias = "beta"
"""


def factory(s: Settings) -> Engine:
    name = s.alias or "?"
    return FakeEngine(
        model_id=name,
        reply=lambda prompt: f"{name} answers with a reply of a few words, one token per byte.",
        n_slots=s.parallel,
        n_ctx_per_seq=s.ctx_size,
        step_delay=0.01,
    )


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("dashboard") / "models.toml"
    config.write_text(CONFIG)
    with live_server(create_app(load(config_file=config), engine_factory=factory)) as url:
        yield url


class Load:
    """Four clients of chat requests to one model (two slots: some wait), until stopped; at most 60 requests."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            while not self.stop.is_set() and self.sent < 60:
                self.sent += 1
                body = {"model": self.model, "messages": [{"role": "user", "content": f"hello {i} {self.sent}"}]}
                assert c.post("/v1/chat/completions", json=body).status_code == 200

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def open_dashboard(browser: Browser, url: str, errors: list[str], **context: Any) -> Page:
    page = browser.new_context(viewport=context.pop("viewport", DESKTOP), **context).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/dashboard?every=400&window=30")
    return page


def give_key(page: Page) -> None:
    expect(page.get_by_test_id("apikey-prompt")).to_be_visible()  # /metrics answered 401
    page.get_by_test_id("apikey-input").fill(KEY)
    page.get_by_test_id("apikey-save").click()
    expect(page.get_by_test_id("dashboard-status")).to_contain_text("live")
    expect(page.get_by_test_id("apikey-prompt")).to_be_hidden()


def chart(page: Page, name: str) -> Any:
    return page.get_by_test_id(f"chart-{name}")


def tokens_per_second(page: Page) -> float:
    text = chart(page, "tokens-per-second").get_by_test_id("chart-value").inner_text()
    return float(text.split()[0]) if text != "no data" else -1.0


def test_charts_render_and_update_under_load_per_model(
    browser: Browser, two_models: str, artifacts: Path, page_errors: list[str]
) -> None:
    page = open_dashboard(browser, two_models, page_errors)
    give_key(page)
    models = page.get_by_test_id("dashboard-model")
    expect(models.locator("option")).to_have_text(["alpha", "beta"])
    with Load(two_models, "alpha"):
        page.wait_for_function("() => Number(document.body.dataset.polls) >= 6", timeout=20_000)
        expect(chart(page, "busy-slots").get_by_test_id("chart-value")).to_contain_text("/ 2")
        page.wait_for_function(f"() => parseFloat(document.querySelector('{TPS_VALUE}').textContent) > 0")
        assert tokens_per_second(page) > 0
        polls_then = int(page.evaluate("document.body.dataset.polls"))
        d_then = chart(page, "tokens-per-second").get_by_test_id("chart-line").get_attribute("d")
        page.wait_for_function(f"() => Number(document.body.dataset.polls) >= {polls_then + 12}")
        page.screenshot(path=str(artifacts / "dashboard-desktop-light.png"))
    # Every chart drew its line from the polls (the first scrape has no rates, so rate charts start at the second).
    for name in CHARTS:
        card = chart(page, name)
        expect(card).to_be_visible()
        assert int(card.get_attribute("data-points") or 0) >= 2, name
        assert (card.get_by_test_id("chart-line").first.get_attribute("d") or "").startswith("M"), name
    assert chart(page, "tokens-per-second").get_by_test_id("chart-line").get_attribute("d") != d_then  # it moved
    ttft = chart(page, "ttft").get_by_test_id("chart-value").inner_text()
    assert "ms" in ttft or " s" in ttft
    # The other model saw none of that load.
    models.select_option("beta")
    expect(chart(page, "tokens-per-second").get_by_test_id("chart-value")).to_have_text("0.0 tok/s")
    with Load(two_models, "beta"):
        page.wait_for_function(
            f"() => parseFloat(document.querySelector('{TPS_VALUE}').textContent) > 0", timeout=20_000
        )
    models.select_option("alpha")
    page.reload()  # the key and the chosen model are remembered
    expect(page.get_by_test_id("dashboard-status")).to_contain_text("live")
    expect(page.get_by_test_id("apikey-prompt")).to_be_hidden()
    expect(models).to_have_value("alpha")
    assert page_errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dashboard_fits_a_phone_in_both_themes(
    browser: Browser, two_models: str, artifacts: Path, page_errors: list[str], scheme: str
) -> None:
    page = open_dashboard(browser, two_models, page_errors, viewport=PHONE, color_scheme=scheme)
    give_key(page)
    with Load(two_models, "alpha"):
        page.wait_for_function("() => Number(document.body.dataset.polls) >= 5", timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(artifacts / f"dashboard-phone-{scheme}.png"), full_page=True)
    assert (artifacts / f"dashboard-phone-{scheme}.png").stat().st_size > 10_000
    assert page_errors == []


def test_metrics_parser_and_quantiles(browser: Browser, two_models: str) -> None:
    """web/metrics.js against hand-worked answers (histogram_quantile's linear interpolation)."""
    page = browser.new_context().new_page()
    page.goto(f"{two_models}/dashboard.html")
    got = page.evaluate(
        """async () => {
          const m = await import('/metrics.js');
          const text = [
            '# HELP x_seconds a histogram',
            'x_seconds_bucket{model="a \\\\"q\\\\"",le="0.1"} 10',
            'x_seconds_bucket{model="a \\\\"q\\\\"",le="1.0"} 30',
            'x_seconds_bucket{model="a \\\\"q\\\\"",le="+Inf"} 40',
            'llamaserve_generation_tokens_total{model="b"} 12 1700000000000',
            'broken{model=',
          ].join('\\n');
          const samples = m.parsePrometheus(text);
          const before = new Map([[0.1, 0], [1.0, 0], [Infinity, 0]]);
          const after = m.indexByModel(samples).get('a "q"').buckets.get('x_seconds');
          return {
            n: samples.length,
            model: samples[0].labels.model,
            p50: m.histogramQuantile(0.5, before, after),
            p20: m.histogramQuantile(0.2, before, after),
            p95: m.histogramQuantile(0.95, before, after),
            none: m.histogramQuantile(0.5, after, after),
            tokens: samples[3].value,
          };
        }"""
    )
    assert got["n"] == 4 and got["model"] == 'a "q"' and got["tokens"] == 12
    assert got["p20"] == pytest.approx(0.08)  # rank 8 of the 10 under 0.1
    assert got["p50"] == pytest.approx(0.1 + 0.9 * (20 - 10) / 20)  # rank 20: half way into (0.1, 1]
    assert got["p95"] == 1.0  # beyond the last finite bucket: its bound
    assert got["none"] is None  # nothing observed between the two scrapes


def test_the_chat_page_links_to_the_dashboard(browser: Browser, two_models: str, page_errors: list[str]) -> None:
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"{two_models}/")
    page.get_by_test_id("open-dashboard").click()
    expect(page).to_have_url(f"{two_models}/dashboard")
    expect(page.get_by_test_id("chart-tokens-per-second")).to_be_visible()
    page.get_by_test_id("dashboard-back").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    assert page_errors == []
