"""Streaming, disconnects and overload over real sockets, with the fake engine."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def slots_busy(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["slots_busy"])


def read_until_first_token(r: httpx.Response) -> Iterator[str]:
    # A line iterator that is dropped (or left by `break`) closes the connection, so the caller
    # keeps the one returned here for as long as the stream should stay open.
    lines = r.iter_lines()
    while '"content":"z"' not in next(lines):
        pass
    return lines


def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_tokens_arrive_one_by_one_not_buffered() -> None:
    # One token per engine step, a step every 50 ms: a server that sends each token as it exists
    # delivers them about 50 ms apart over a second; one that buffers delivers a burst, or a few.
    step, reply = 0.05, "abcdefghijklmnopqrst"
    engine = FakeEngine(reply=lambda p: reply, n_slots=1, step_delay=step)
    with live_server(create_app(Settings(), engine=engine)) as url:
        arrivals: list[tuple[float, str]] = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and (
                    content := json.loads(line[6:])["choices"][0]["delta"].get("content")
                ):
                    arrivals.append((time.monotonic(), content))
    assert [content for _, content in arrivals] == list(reply)  # one chunk per token
    times = [t for t, _ in arrivals]
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    # Tokens arrive apart, at the pace they are generated: two thirds of the gaps are at least half
    # a step (the rest tolerates a busy machine merging a few reads). In bursts, even of two
    # tokens, half the gaps or more would be ~0.
    assert gaps[len(gaps) // 3] > step / 2, gaps
    # And the first arrives long before the last: delivery is spread over the whole generation.
    assert times[-1] - times[0] > 0.6 * step * (len(reply) - 1)


def test_client_disconnect_frees_the_slot_for_the_next_request() -> None:
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.005)
    with live_server(create_app(Settings(max_queue=0), engine=engine)) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=30) as r:
            _open = read_until_first_token(r)
            assert slots_busy(url) == 1
        # Leaving the block closed the connection mid-stream.
        wait_until(lambda: slots_busy(url) == 0)
        r2 = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            timeout=30,
        )
        assert r2.status_code == 200 and r2.json()["choices"][0]["message"]["content"] == "zzz"


def test_non_streaming_disconnect_also_cancels() -> None:
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.005)
    with live_server(create_app(Settings(), engine=engine)) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json={"messages": BODY["messages"]}, timeout=0.5)
        wait_until(lambda: slots_busy(url) == 0)


def test_concurrent_streams_all_complete() -> None:
    engine = FakeEngine(reply=lambda p: "hello there", n_slots=4, step_delay=0.002)

    async def run(url: str) -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> str:
                text, done = "", False
                async with client.stream("POST", f"{url}/v1/chat/completions", json=BODY) as r:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: {"):
                            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                assert done
                return text

            return await asyncio.gather(*(one() for _ in range(8)))

    with live_server(create_app(Settings(max_queue=8), engine=engine)) as url:
        assert asyncio.run(run(url)) == ["hello there"] * 8
        wait_until(lambda: slots_busy(url) == 0)


def test_full_queue_answers_429_with_retry_after() -> None:
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.005)
    with (
        live_server(create_app(Settings(max_queue=0), engine=engine)) as url,
        httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=30) as r,
    ):
        _open = read_until_first_token(r)
        busy = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30)
        assert busy.status_code == 429
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "queue_full"
