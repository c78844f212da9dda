"""/v1/messages streams over a real socket: text deltas arrive as they are generated, and a client that
leaves mid-stream frees its slot (the anthropic SDK, against uvicorn, with the fake engine)."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

REPLY = "abcdefghijklmnopqrst"
ASK = [{"role": "user", "content": "hi"}]


def slots_busy(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["slots_busy"])


def test_text_arrives_as_generated_and_leaving_frees_the_slot() -> None:
    engine = FakeEngine(reply=lambda p: REPLY, n_slots=1, step_delay=0.05)
    with live_server(create_app(Settings(), engine=engine)) as url:
        sdk = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        arrivals: list[float] = []
        with sdk.messages.stream(model="fake-model", max_tokens=64, messages=ASK) as stream:  # type: ignore[arg-type]
            for _ in stream.text_stream:
                arrivals.append(time.monotonic())
        assert len(arrivals) == len(REPLY)
        # One token per 50 ms step: a buffered body would arrive as one burst.
        assert arrivals[-1] - arrivals[0] > 0.5
        # Now leave after the first text: the slot is freed long before the reply would end.
        with sdk.messages.stream(model="fake-model", max_tokens=64, messages=ASK) as stream:  # type: ignore[arg-type]
            next(iter(stream.text_stream))
            assert slots_busy(url) == 1
        deadline = time.monotonic() + 0.5  # the reply has ~19 steps (~1 s) to go
        while slots_busy(url) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slots_busy(url) == 0
