"""web/markdown.js in the browser: whatever a model writes, only our own tags and attributes appear."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.browser.support import PageFactory

pytestmark = [pytest.mark.browser, pytest.mark.live]

ALLOWED_TAGS = {
    "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "strong", "em", "del", "code", "pre", "ul", "ol", "li",
    "blockquote", "hr", "table", "thead", "tbody", "tr", "th", "td", "a", "div", "span", "button",
}  # fmt: skip
ALLOWED_ATTRS = {"class", "href", "target", "rel", "start", "type", "data-testid"}

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    '[x](https://example.com/" onmouseover="alert(1))',
    "[x](https://example.com/\" onclick='alert(1)')",
    "![img](https://example.com/x.png)",
    "`<b>code</b>`",
    "```\n<script>alert(1)</script>\n```",
    "```html onload=alert(1)\n<svg onload=alert(1)>\n```",
    "| <b>a</b> | b |\n|---|---|\n| <img src=x> | `<i>` |",
    "# <h1 onclick=alert(1)>x</h1>",
    "> <iframe src=https://example.com></iframe>",
    "- <style>*{display:none}</style>\n- **<b>x</b>**",
    "**[a](https://a.example/**b**)**",
    "\u0000<b>\u0000 0 \u0000",
    "1. <form action=https://evil.example><button>go</button></form>",
    "<!-- comment --> &lt;already&gt; &amp; &#x3C;script&#x3E;",
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
]

FRAGMENTS = [
    "# ", "## ", "- ", "1. ", "> ", "**", "*", "_", "__", "~~", "`", "```", "|", " | ", "---", "\n", "\n\n",
    "[", "]", "(", ")", "https://example.com/", "javascript:", "<", ">", '"', "'", "=", "&", "onerror",
    "<img src=x onerror=alert(1)>", "<script>", "</script>", "text", "  ", "\\|", ":--", "--:", "\u0000",
]  # fmt: skip

RENDER_ALL = """
async (inputs) => {
  const { renderMarkdown } = await import("/markdown.js");
  const seen = [];
  for (const src of inputs) {
    const t = document.createElement("template");  // inert: nothing parsed here runs or loads
    t.innerHTML = renderMarkdown(src);
    for (const el of t.content.querySelectorAll("*")) {
      seen.push({ src, tag: el.localName, attrs: [...el.attributes].map((a) => [a.name, a.value]) });
    }
  }
  return seen;
}
"""


def fuzz_inputs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def check_elements(seen: list[dict[str, Any]]) -> None:
    for element in seen:
        assert element["tag"] in ALLOWED_TAGS, element
        for name, value in element["attrs"]:
            assert name in ALLOWED_ATTRS, element
            if name == "href":
                assert value.startswith(("https://", "http://")), element
                assert not any(c in value for c in '"<> '), element


def test_hostile_input_yields_only_our_own_markup(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    seen = page.evaluate(RENDER_ALL, HOSTILE)
    check_elements(seen)
    tags = {e["tag"] for e in seen}
    assert "img" not in tags and "script" not in tags
    # The renderer did render Markdown around the hostile text (so the check above saw real output).
    assert {"code", "pre", "table", "h1", "blockquote", "ul", "ol", "a", "strong"} <= tags


def test_random_markdown_soup_yields_only_our_own_markup(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    seen = page.evaluate(RENDER_ALL, fuzz_inputs(400, seed=20261126))
    check_elements(seen)
    assert len(seen) > 400


def test_text_round_trips_through_escaping(fake_server: str, open_page: PageFactory) -> None:
    page = open_page(fake_server)
    text = page.evaluate(
        """async (src) => {
            const { renderMarkdown } = await import("/markdown.js");
            const t = document.createElement("template");
            t.innerHTML = renderMarkdown(src);
            return t.content.textContent;
        }""",
        "a < b && c > d \"quoted\" 'single' <tag attr=1>",
    )
    assert text == "a < b && c > d \"quoted\" 'single' <tag attr=1>"
