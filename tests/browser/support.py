"""What the browser tests share besides fixtures: the fake engine's reply script, sizes, helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Dialog, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(2)</script>"

MARKDOWN_REPLY = f"""## Capitals

Here is a **table** of capitals, with `inline code`:

| Country | Capital |
|:--------|--------:|
| France  | Paris   |
| Japan   | Tokyo   |

- first point
- second point

```python
print("hello <world>")
```

Raw markup stays text: {XSS_IMG} and {XSS_SCRIPT} and [link](javascript:alert(3)).
"""

# A tidy reply for the screenshots in docs/.
CAPITALS_REPLY = """Here are a few European capitals:

| Country | Capital | Population |
|:--------|:--------|-----------:|
| France  | Paris   | 2.1 M |
| Italy   | Rome    | 2.8 M |
| Spain   | Madrid  | 3.3 M |

To look one up in Python:

```python
capitals = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid"}
print(capitals["Italy"])
```

- **Paris** is the largest of the three by metro area.
- *Rome* is the oldest.
"""

COMPLETION_CONTINUATION = " score and seven years ago our fathers brought forth a new nation."
STORY_CONTINUATION = (
    " had not spoken to anyone in three weeks. Each evening he climbed the hundred and twelve steps,"
    " wound the clockwork, and trimmed the wick while the gulls argued below.\n\nOn the twenty-second"
    " night a light answered his: three flashes from the open sea."
)
SLOW_REPLY = "This reply is long on purpose, so that it can be stopped halfway. " * 40
# Two-byte characters: the fake's tokens are bytes, so each is split over two tokens.
DESSERT_CONTINUATION = " crème brûlée"


def last_user_turn(prompt: str) -> str:
    """The text of the last user message in a ChatML prompt, or the whole prompt (completions)."""
    if "<|im_start|>user\n" not in prompt:
        return prompt
    return prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]


def scripted_reply(prompt: str) -> str:
    turn = last_user_turn(prompt)
    if "<|im_start|>" not in prompt:  # /v1/completions: a plain text to continue
        if "lighthouse" in prompt:
            return STORY_CONTINUATION
        if "dessert" in prompt:
            return DESSERT_CONTINUATION
        return SLOW_REPLY if "slow" in prompt else COMPLETION_CONTINUATION
    if "capitals" in turn.lower():
        return CAPITALS_REPLY
    if "markdown" in turn.lower():
        return MARKDOWN_REPLY
    if "slow" in turn.lower():
        return SLOW_REPLY
    if "<|im_start|>system\n" in prompt and "pirate" in prompt:
        return "Arr, a system prompt reached me."
    return f"You said: {turn}"


class DialogWatch:
    """Every alert/confirm/prompt the page opens; a rendering test asserts there were none."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, dialog: Dialog) -> None:
        self.seen.append(dialog.message)
        dialog.dismiss()


PageFactory = Callable[..., Page]

_CSP_WATCH = (
    "window.__csp = window.__csp || [];"
    "document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective));"
)


def watch_csp(page: Page) -> None:
    """Record the page's Content-Security-Policy violations, now and after any reload."""
    page.add_init_script(_CSP_WATCH)
    page.evaluate(_CSP_WATCH)


def csp_violations(page: Page) -> list[str]:
    found: list[str] = page.evaluate("window.__csp || []")
    return found
