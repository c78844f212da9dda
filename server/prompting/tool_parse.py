"""Model output -> tool calls: the formats small and large models write calls in.

``<|python_tag|>`` (Llama 3.1), bare JSON ``{"name", "parameters"|"arguments"}``, several of
them, a JSON array, ``<tool_call>`` tags, code fences, ``<function=NAME>{...}</function>``.
Text that names an undeclared function, or holds anything beside the calls, is not a call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_CALL_KEYS = frozenset({"name", "parameters", "arguments", "type", "id"})


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Mapping[str, Any]
    # The arguments object exactly as the model wrote it, when it wrote one: streamed and
    # non-streamed responses both send this text, so they agree byte for byte.
    raw_arguments: str | None = field(default=None, compare=False)

    def arguments_json(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FUNCTION_TAG = re.compile(r"<function=([a-zA-Z0-9_-]+)>(.*?)</function>", re.DOTALL)
_SEPARATORS = " \t\r\n;,"


_JSON_WS = " \t\r\n"


def _json_values(text: str) -> list[tuple[Any, int]] | None:
    """Every JSON value in ``text`` with its start, separated by whitespace, ';' or ','; None if anything else."""
    decoder = json.JSONDecoder()
    values: list[tuple[Any, int]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SEPARATORS:
            i += 1
        if i >= n:
            return values
        start = i
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.append((value, start))


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _JSON_WS:
        i += 1
    return i


def _member_texts(text: str, start: int) -> dict[str, str]:
    """The source text of each top-level member value of the valid JSON object at ``text[start]``."""
    decoder = json.JSONDecoder()
    out: dict[str, str] = {}
    i = _skip_ws(text, start + 1)
    while text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past the ':'
        _, end = decoder.raw_decode(text, i)
        out[key] = text[i:end]
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return out


def _as_call(value: Any, allowed: set[str], members: Mapping[str, str] | None = None) -> ParsedCall | None:
    if not isinstance(value, Mapping) or not set(value) <= _CALL_KEYS:
        return None
    if value.get("type", "function") != "function":
        return None
    name = value.get("name")
    if not isinstance(name, str) or name not in allowed:
        return None
    if "parameters" in value and "arguments" in value:
        return None
    args = value.get("parameters", value.get("arguments", {}))
    if isinstance(args, str):
        # Some models write the arguments as a JSON string, as OpenAI sends them.
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        return None
    raw = None
    if members is not None:
        key = "parameters" if "parameters" in value else "arguments"
        text = members.get(key)
        raw = text if text is not None and text.startswith("{") else None
    return ParsedCall(name=name, arguments=dict(args), raw_arguments=raw)


def parse_tool_calls(text: str, allowed: set[str]) -> list[ParsedCall]:
    """The calls ``text`` consists of, all to functions in ``allowed``; [] when it is content."""
    body = text.strip()
    for marker in ("<|python_tag|>", "[TOOL_CALLS]"):  # Llama 3.1's and Mistral's call markers
        body = body.removeprefix(marker).strip()
    for end in ("<|eom_id|>", "<|eot_id|>"):
        body = body.removesuffix(end).strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    if not body:
        return []
    if _FUNCTION_TAG.search(body):
        if _FUNCTION_TAG.sub("", body).strip(_SEPARATORS):
            return []
        calls = []
        for name, args_text in _FUNCTION_TAG.findall(body):
            try:
                args = json.loads(args_text) if args_text.strip() else {}
            except ValueError:
                return []
            call = _as_call({"name": name, "parameters": args}, allowed)
            if call is None:
                return []
            calls.append(call)
        return calls
    if _TAGGED.search(body):
        if _TAGGED.sub("", body).strip(_SEPARATORS):
            return []
        body = "\n".join(_TAGGED.findall(body))
    values = _json_values(body)
    if not values:
        return []
    calls = []
    for value, start in values:
        if isinstance(value, list):
            found = [_as_call(v, allowed) for v in value]
        else:
            members = _member_texts(body, start) if isinstance(value, dict) else None
            found = [_as_call(value, allowed, members)]
        for call in found:
            if call is None:
                return []
            calls.append(call)
    return calls
