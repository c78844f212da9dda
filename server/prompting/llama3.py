"""The native Llama 3.1 Instruct prompt builder: plain Python, no Jinja at request time.

It writes exactly what Meta's official template (``tokenizer.chat_template`` of
Llama-3.1-8B-Instruct, rendered the Hugging Face way) writes for the same input,
byte for byte; ``tests/unit/test_llama3.py`` proves it on a corpus. The input is
a list of *normalised* messages (see :func:`server.chat_template.normalize_messages`):
string content, ``tool_calls[].function.arguments`` already decoded from JSON.

Two deliberate differences, both where the official template refuses to render:
an assistant turn with several tool calls becomes one assistant turn per call
(the template raises "only supports single tool-calls"), and ``tools`` with no
first message raises our :class:`InvalidRequestError` with the template's words.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from server.errors import InvalidRequestError

BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
# Tokens that end a turn; llama.cpp marks them end-of-generation in a Llama 3 vocabulary.
STOP_TOKENS = (EOT, EOM, "<|end_of_text|>")
# Single special tokens in every Llama 3 vocabulary: how a model without a template is recognised.
HEADER_TOKENS = (START_HEADER, END_HEADER, EOT)

# The template's own default, used by its tests and by callers that pass no date.
DEFAULT_DATE = "26 Jul 2024"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_TOOL_INSTRUCTIONS = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


def date_string(day: dt.date | None = None) -> str:
    """``26 Jul 2024``: strftime's ``%d %b %Y`` without depending on the process locale."""
    day = day or dt.date.today()
    return f"{day.day:02d} {_MONTHS[day.month - 1]} {day.year}"


def _tojson(value: Any, indent: int | None = None) -> str:
    # Hugging Face's tojson, which the official template is rendered with.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _text(value: Any) -> str:
    # What Jinja prints for a value: None prints as "None", like the template would.
    return value if isinstance(value, str) else str(value)


def _header(role: str) -> str:
    return f"{START_HEADER}{role}{END_HEADER}\n\n"


def _tool_call_text(call: Mapping[str, Any]) -> str:
    function = call.get("function", call)
    return '{"name": "' + _text(function.get("name")) + '", "parameters": ' + _tojson(function.get("arguments")) + "}"


def _tool_result_text(content: Any) -> str:
    # The template's test is "mapping or iterable", and a string is iterable: so a string
    # result is JSON-quoted. Meta's template does it; so do we.
    if isinstance(content, Mapping | str | list | tuple):
        return _tojson(content)
    return _text(content)


def render(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    date: str | None = None,
    bos_token: str = BOS,
) -> str:
    """The prompt text, starting with ``bos_token`` (tokenize it without adding another BOS)."""
    out = [bos_token]
    rest = list(messages)
    system = ""
    if rest and rest[0].get("role") == "system":
        system = _text(rest[0].get("content")).strip()
        rest = rest[1:]

    out.append(_header("system"))
    if tools is not None:
        out.append("Environment: ipython\n")
    out.append("Cutting Knowledge Date: December 2023\n")
    out.append(f"Today Date: {date or date_string()}\n\n")
    out.append(system)
    out.append(EOT)

    if tools is not None:
        # Custom tools go into the first remaining message, whatever its role (as the template does).
        if not rest:
            raise InvalidRequestError(
                "Cannot put tools in the first user message when there's no first user message!",
                param="messages",
            )
        first = _text(rest[0].get("content")).strip()
        rest = rest[1:]
        out.append(_header("user"))
        out.append(_TOOL_INSTRUCTIONS)
        for tool in tools:
            out.append(_tojson(tool, indent=4))
            out.append("\n\n")
        out.append(first + EOT)

    for message in rest:
        role = message.get("role")
        if "tool_calls" in message:
            # Several calls: one assistant turn each, since the model was trained on single calls.
            for call in message["tool_calls"]:
                out.append(_header("assistant") + _tool_call_text(call) + EOT)
        elif role in ("tool", "ipython"):
            out.append(_header("ipython") + _tool_result_text(message.get("content")) + EOT)
        else:
            out.append(_header(_text(role)) + _text(message.get("content")).strip() + EOT)

    if add_generation_prompt:
        out.append(_header("assistant"))
    return "".join(out)
