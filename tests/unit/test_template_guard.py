"""server/prompting/template_guard.py: a hostile chat template is stopped quickly, an ordinary one renders as before."""

from __future__ import annotations

import time

import pytest
from jinja2.sandbox import SecurityError

from server.prompting.template_guard import GuardedSandbox, render_guarded

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render(source: str, seconds: float = 0.5, max_chars: int = 10_000) -> str:
    template = GuardedSandbox(trim_blocks=True, lstrip_blocks=True).from_string(source)
    return render_guarded(
        template, {"messages": MESSAGES, "add_generation_prompt": True}, seconds=seconds, max_chars=max_chars
    )


def test_an_ordinary_template_renders_unchanged() -> None:
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert render(CHATML) == expected
    assert render("{{ (messages|length) * 3 }} {{ 2 ** 10 }} {{ 'ab' * 3 }}") == "6 1024 ababab"


@pytest.mark.parametrize(
    "source",
    [
        # 10^10 iterations: without a deadline this would hold the event loop for hours.
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% set x = messages[0] %}{% endfor %}{% endfor %}",
    ],
)
def test_nested_loops_hit_the_deadline(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(SecurityError):
        render(source, seconds=0.2, max_chars=10**12)
    assert time.monotonic() - started < 30  # stopped, not run to the end


@pytest.mark.parametrize("source", ["{{ 'a' * 1000000000 }}", "{{ [1] * 1000000000 }}", "{{ 10 ** 100000000 }}"])
def test_memory_bombs_are_refused_before_they_allocate(source: str) -> None:
    with pytest.raises(SecurityError):
        render(source)


def test_output_is_capped() -> None:
    with pytest.raises(SecurityError, match="more than 1000 characters"):
        render("{% for i in range(5000) %}x{% endfor %}", max_chars=1000)


def test_the_sandbox_still_denies_python_internals() -> None:
    with pytest.raises(SecurityError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}")
