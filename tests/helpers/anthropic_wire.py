"""The ``anthropic`` SDK's own pydantic types as the wire truth for /v1/messages*.

:func:`wire_hook` is an httpx response hook: every /v1/messages* body (JSON or SSE) is parsed with
the SDK's types strictly (no missing required field, no field the SDK does not define, at any
depth), and a stream's events must come in Anthropic's order. The SDK itself builds its models
without validation, so this is the check that our wire would not surprise a stricter client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pydantic
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse

_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
# 413's type is in Anthropic's error docs but not in the SDK's ErrorType union.
_UNTYPED_ERRORS = frozenset({"request_too_large"})


def no_extra_fields(value: Any, where: str = "") -> None:
    """Fail when any model in ``value`` holds a field its SDK class does not declare."""
    if isinstance(value, pydantic.BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where or type(value).__name__}: fields the SDK does not define: {sorted(extra)}"
        for name in type(value).model_fields:
            no_extra_fields(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            no_extra_fields(item, f"{where}[{i}]")


def strict(cls: type[pydantic.BaseModel], data: Any) -> Any:
    parsed = cls.model_validate(data, strict=True)
    no_extra_fields(parsed, cls.__name__)
    return parsed


def check_error(data: Any) -> None:
    if data.get("error", {}).get("type") in _UNTYPED_ERRORS:
        assert set(data) == {"type", "error"} and data["type"] == "error", data
        assert set(data["error"]) == {"type", "message"} and data["error"]["message"], data
        return
    strict(ErrorResponse, data)


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) for each SSE event; comments (keep-alives) are skipped."""
    events = []
    for raw in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in raw.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def check_stream(text: str) -> list[Any]:
    """Parse every event strictly and check Anthropic's order; returns the data of each event."""
    events = sse_events(text)
    assert events, "an empty stream"
    datas = []
    for name, data in events:
        assert name == data["type"], f"event name {name!r} differs from its type {data['type']!r}"
        if name == "ping":
            assert data == {"type": "ping"}
        elif name == "error":
            check_error(data)
        else:
            no_extra_fields(_EVENTS.validate_python(data, strict=True), name)
        datas.append(data)
    _check_order([d for d in datas if d["type"] != "ping"])
    return datas


def _check_order(events: list[Any]) -> None:
    assert events[0]["type"] == "message_start", events[0]
    if events[-1]["type"] == "error":  # an error may end the stream anywhere after the start
        events = events[:-1]
        complete = False
    else:
        assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"], events[-2:]
        complete = True
    open_index: int | None = None
    next_index = 0
    ended = False  # after a message_delta, no block may start
    for e in events[1:]:
        kind = e["type"]
        assert kind != "message_start", "a second message_start"
        assert kind != "message_stop" or e is events[-1], "message_stop before the end"
        assert not (ended and kind.startswith("content_block")), "a block after message_delta"
        if kind == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert e["index"] == next_index, e
            open_index, next_index = e["index"], next_index + 1
        elif kind == "content_block_delta":
            assert e["index"] == open_index, e
        elif kind == "content_block_stop":
            assert e["index"] == open_index, e
            open_index = None
        elif kind in ("message_delta", "message_stop"):
            assert open_index is None, "the message ended with a block open"
            ended = True
    if complete:
        assert open_index is None


def check_response(response: httpx.Response) -> str | None:
    """Check one /v1/messages* response; returns what it was checked as (None: not ours)."""
    path = response.request.url.path
    if not path.startswith("/v1/messages"):
        return None
    response.read()
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        check_stream(response.text)
        return "stream"
    data = response.json()
    if response.status_code >= 400:
        check_error(data)
        return "error"
    strict(MessageTokensCount if path.endswith("/count_tokens") else Message, data)
    return "count_tokens" if path.endswith("/count_tokens") else "message"


def wire_hook(checked: list[str]) -> Callable[[httpx.Response], None]:
    def hook(response: httpx.Response) -> None:
        kind = check_response(response)
        if kind is not None:
            checked.append(kind)

    return hook
