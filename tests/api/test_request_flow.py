"""One pass per request, as a user sees it: limits from settings, work off the event loop, typed errors.

Every test here failed before the services were rebuilt over one pipeline: the wire model capped
``n`` at 16 and ``stop`` at 4 whatever the settings said, templates were rendered and prompts
tokenized on the event loop, and any refusal of the engine was reported as a grammar error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.base import InvalidGrammarError, PromptTooLongError, SamplingParams, SlotBusyError
from server.engine.fake import FakeEngine
from server.settings import Settings

MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(client: TestClient, **fields: object) -> dict[str, object]:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, **fields})
    body: dict[str, object] = r.json()
    body["status"] = r.status_code
    return body


@pytest.fixture
def wide() -> Iterator[TestClient]:
    engine = FakeEngine(reply=lambda p: "ok", n_slots=4)
    with TestClient(create_app(Settings(max_n=24, max_stop=6, max_queue=64), engine=engine)) as c:
        yield c


def test_max_n_and_max_stop_above_the_old_wire_caps_take_effect(wide: TestClient) -> None:
    r = chat(wide, n=20)
    assert r["status"] == 200 and len(r["choices"]) == 20  # type: ignore[arg-type]
    assert chat(wide, stop=["a", "b", "c", "d", "e", "f"])["status"] == 200
    over = chat(wide, n=25)
    assert over["status"] == 400 and over["error"]["param"] == "n"  # type: ignore[index]
    assert "at most 24" in over["error"]["message"]  # type: ignore[index]
    over = chat(wide, stop=list("abcdefg"))
    assert over["status"] == 400 and over["error"]["param"] == "stop"  # type: ignore[index]


def test_the_default_limits_still_refuse_what_they_did(client: TestClient) -> None:
    assert chat(client, n=17)["error"]["param"] == "n"  # type: ignore[index]
    assert chat(client, stop=list("abcde"))["error"]["param"] == "stop"  # type: ignore[index]


class ThreadRecordingEngine(FakeEngine):
    """Notes whether each tokenize ran on a thread with a running event loop."""

    def __init__(self) -> None:
        super().__init__(reply=lambda p: "ok")
        self.on_event_loop: list[bool] = []

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        try:
            asyncio.get_running_loop()
            self.on_event_loop.append(True)
        except RuntimeError:
            self.on_event_loop.append(False)
        return super().tokenize(text, add_special=add_special, parse_special=parse_special)


def test_rendering_and_tokenizing_never_run_on_the_event_loop() -> None:
    engine = ThreadRecordingEngine()
    with TestClient(create_app(Settings(), engine=engine)) as c:
        engine.on_event_loop.clear()  # the template's start-up probes are not requests
        assert chat(c)["status"] == 200
        r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert c.post("/v1/completions", json={"prompt": "x" * 1000, "max_tokens": 1}).status_code == 200
        assert c.post("/tokenize", json={"content": "y" * 10_000}).status_code == 200
        assert c.post("/apply-template", json={"messages": MESSAGES}).status_code == 200
    assert engine.on_event_loop and not any(engine.on_event_loop)


class RefusingEngine(FakeEngine):
    """An engine whose begin() refuses every sequence with the error it was given."""

    def __init__(self, error: Exception) -> None:
        super().__init__(reply=lambda p: "ok")
        self.error = error
        self.begun = threading.Event()

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        self.begun.set()
        raise self.error


@pytest.mark.parametrize(
    ("error", "fields", "status", "param", "code"),
    [
        # A grammar the engine refuses is named by the field it came from.
        (InvalidGrammarError("bad"), {"response_format": {"type": "json_object"}}, 400, "response_format", None),
        (InvalidGrammarError("bad"), {"grammar": "root ::= x"}, 400, "grammar", None),
        (PromptTooLongError(600, 512), {}, 400, "messages", "context_length_exceeded"),
        # Not the client's fault, and never reported as a grammar error.
        (SlotBusyError(0), {}, 500, None, "generation_failed"),
    ],
)
def test_the_engines_typed_refusals_become_the_right_api_errors(
    error: Exception, fields: dict[str, object], status: int, param: str | None, code: str | None
) -> None:
    engine = RefusingEngine(error)
    with TestClient(create_app(Settings(), engine=engine)) as c:
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream, **fields})
            if stream:
                # Refused after the stream began: the error arrives as the stream's error event.
                assert r.status_code == 200 and "event: error" in r.text
                continue
            assert r.status_code == status, r.text
            err = r.json()["error"]
            assert (err["param"], err["code"]) == (param, code)
    assert engine.begun.is_set()
