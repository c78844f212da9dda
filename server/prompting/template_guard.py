"""Limits for chat templates taken from GGUF files: a render time limit and an output size limit.

A GGUF's Jinja template is someone else's code, and it runs on every chat request.
``ImmutableSandboxedEnvironment`` already denies Python internals and caps ``range``
at 100,000; :class:`GuardedSandbox` adds what the sandbox lacks:

- a deadline, checked on every call, attribute or item access, ``range``, and
  between output chunks, so nested loops cannot hold the event loop for long;
- ``*`` on strings and lists refused when the result would be huge, and ``**``
  with a large exponent, so one expression cannot allocate gigabytes;
- a cap on the rendered text.

Each limit raises jinja2's ``SecurityError`` (a ``TemplateError``), which the chat
template turns into a 400 like any other render failure. The deadline lives in a
context variable, so concurrent renders (threads, tasks) each keep their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from jinja2 import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

RENDER_SECONDS = 2.0
MAX_OUTPUT_CHARS = 16 * 2**20
MAX_PRODUCT_ITEMS = 2**20  # the longest string or list `*` may build
MAX_EXPONENT = 1024

_deadline: ContextVar[float | None] = ContextVar("llamaserve_template_deadline", default=None)


def _check_deadline() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise SecurityError("the chat template took too long to render")


def _guarded_range(*args: int) -> range:
    _check_deadline()
    result: range = safe_range(*args)
    return result


class GuardedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a render deadline and limits on ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _guarded_range

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_PRODUCT_ITEMS
                ):
                    raise SecurityError("the chat template tried to build a huge string or list")
        elif operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError("the chat template used a huge exponent")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        return super().getitem(obj, argument)


def render_guarded(
    template: Template,
    context: dict[str, Any],
    *,
    seconds: float = RENDER_SECONDS,
    max_chars: int = MAX_OUTPUT_CHARS,
) -> str:
    """Render ``template`` (from a :class:`GuardedSandbox`) within ``seconds`` and ``max_chars``."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        return _join_limited(template.generate(**context), max_chars)
    finally:
        _deadline.reset(token)


def _join_limited(chunks: Iterable[str], max_chars: int) -> str:
    out: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_chars:
            raise SecurityError(f"the chat template rendered more than {max_chars} characters")
        _check_deadline()
        out.append(chunk)
    return "".join(out)
