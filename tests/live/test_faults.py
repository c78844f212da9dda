"""Faults over real sockets: clients that vanish, an engine that fails, requests that run too long.

The fake engine runs in-process (tests/helpers/live.py), so the tests can inject failures and
look at its slots directly. Random choices come from a fixed seed: a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def health(url: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{url}/health", timeout=5).json()
    return body


def idle(url: str) -> bool:
    h = health(url)
    return h["slots_busy"] == 0 and h["requests_waiting"] == 0


async def read_sse(lines: AsyncIterator[str]) -> tuple[str, list[dict[str, object]], bool]:
    """(text, error events, saw [DONE]) from a stream's remaining lines."""
    text, errors, done, event = "", [], False, "message"
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            if event == "error":
                errors.append(json.loads(data))
            elif data == "[DONE]":
                done = True
            else:
                for choice in json.loads(data)["choices"]:
                    text += choice["delta"].get("content") or ""
            event = "message"
    return text, errors, done


def test_100_clients_disconnecting_at_random_points_leak_nothing() -> None:
    # A small batch makes the long prompts prefill over many steps, so some clients leave mid-prefill.
    # Replies far longer than the test's waits: only a cancelled request can give its slot back.
    engine = FakeEngine(reply=lambda p: "y" * 100_000, n_slots=4, n_batch=32, step_delay=0.002)
    rng = random.Random(20261126)
    long_prompt = "p" * 1500  # ~47 prefill steps at 32 tokens a step
    plans = []
    for i in range(100):
        kind = ("before_headers", "before_first_token", "mid_stream", "during_prefill")[i % 4]
        plans.append((kind, rng.uniform(0.0, 0.3), rng.randint(1, 60)))

    async def client(http: httpx.AsyncClient, url: str, kind: str, delay: float, lines: int) -> str:
        content = long_prompt if kind == "during_prefill" else "hi"
        body = {"messages": [{"role": "user", "content": content}], "stream": True}

        async def go() -> str:
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                seen = 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    seen += 1
                    # The first data line is the role chunk, sent before any token exists.
                    if kind in ("before_first_token", "during_prefill") and seen >= 1:
                        return "left before the first token"
                    if kind == "mid_stream" and seen >= lines:
                        return "left mid-stream"
                return "finished"

        if kind == "before_headers":
            try:
                return await asyncio.wait_for(go(), delay)
            except TimeoutError:
                return "left before the headers"
        return await go()

    async def run_all(url: str) -> list[str]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
            return await asyncio.gather(*(client(http, url, *plan) for plan in plans))

    with live_server(create_app(Settings(parallel=4, max_queue=200), engine=engine)) as url:
        results = asyncio.run(run_all(url))
        assert all(r.startswith("left") for r in results), results
        wait_until(lambda: idle(url))
        assert engine.active_slots() == 0  # every fake slot was released, not only the scheduler's view
        # The next request is served at once: a free slot is waiting for it.
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "yyy"
        assert idle(url)


def test_a_failed_engine_step_fails_only_that_step_and_the_server_goes_on() -> None:
    engine = FakeEngine(reply=lambda p: "x" * 200, n_slots=2, step_delay=0.01)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def two_streams(url: str) -> list[tuple[str, list[dict[str, object]], bool]]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def one() -> tuple[str, list[dict[str, object]], bool]:
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    return await read_sse(r.aiter_lines())

            tasks = [asyncio.create_task(one()) for _ in range(2)]
            await asyncio.sleep(0.3)  # both are generating
            engine.fail_next_step = True
            return await asyncio.gather(*tasks)

    with live_server(create_app(Settings(), engine=engine)) as url:
        results = asyncio.run(two_streams(url))
        for text, errors, done in results:
            assert not done and len(errors) == 1, (text[:20], errors, done)
            assert errors[0]["error"]["code"] == "generation_failed"  # type: ignore[index]
            assert 0 < len(text) < 200  # it had started, and it stopped
        wait_until(lambda: idle(url))
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "xxx"


def test_an_error_outside_the_decode_does_not_kill_the_engine_thread() -> None:
    engine = FakeEngine(reply=lambda p: "abc", n_slots=2)
    real = engine.token_bytes
    broken = {"once": True}

    def token_bytes(token: int, *, special: bool = False) -> bytes:
        if broken["once"] and token == ord("b"):
            broken["once"] = False
            raise RuntimeError("simulated detokenizer bug")
        return real(token, special=special)

    engine.token_bytes = token_bytes  # type: ignore[method-assign]
    with live_server(create_app(Settings(), engine=engine)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": SHORT["messages"]}, timeout=10)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        wait_until(lambda: idle(url))
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "abc"


def test_request_timeout_ends_running_and_queued_requests() -> None:
    engine = FakeEngine(reply=lambda p: "z" * 100_000, n_slots=1, step_delay=0.005)
    settings = Settings(request_timeout=0.5, max_queue=4)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def run(url: str) -> tuple[tuple[str, list[dict[str, object]], bool], httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def streamed() -> tuple[str, list[dict[str, object]], bool]:
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    return await read_sse(r.aiter_lines())

            first = asyncio.create_task(streamed())
            await asyncio.sleep(0.1)
            # The only slot is taken, so this one waits in the queue until its time is up.
            queued = await http.post(f"{url}/v1/chat/completions", json={"messages": body["messages"]})
            return await first, queued

    with live_server(create_app(settings, engine=engine)) as url:
        (text, errors, done), queued = asyncio.run(run(url))
        assert not done and text and errors[0]["error"]["code"] == "request_timeout"  # type: ignore[index]
        assert queued.status_code == 504 and queued.json()["error"]["code"] == "request_timeout"
        wait_until(lambda: idle(url))
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200


def test_an_unusable_context_is_recreated_and_serving_resumes() -> None:
    engine = FakeEngine(reply=lambda p: "w" * 10_000, n_slots=2, step_delay=0.005)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def stream_then_break(url: str) -> tuple[str, list[dict[str, object]], bool]:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{url}/v1/chat/completions", json=body) as r,
        ):
            lines = r.aiter_lines()
            async for line in lines:
                if '"content":"w"' in line:
                    break
            # From here every step fails until the scheduler recreates the context.
            engine.broken = True
            rest = await read_sse(lines)
            return rest

    with live_server(create_app(Settings(), engine=engine)) as url:
        _text, errors, done = asyncio.run(stream_then_break(url))
        assert not done and errors[0]["error"]["code"] == "generation_failed"  # type: ignore[index]
        # The engine thread fails the step's requests first, then recreates the context: the client
        # may read its error before the reset is done.
        wait_until(lambda: engine.resets >= 1 and not engine.broken)
        wait_until(lambda: idle(url))
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "www"


def test_queued_clients_that_leave_never_take_a_slot() -> None:
    engine = FakeEngine(reply=lambda p: "q" * 100_000, n_slots=1, step_delay=0.005)
    stream = {"messages": [{"role": "user", "content": "first"}], "stream": True}

    async def run(url: str) -> None:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{url}/v1/chat/completions", json=stream) as first,
        ):
            lines = first.aiter_lines()
            async for line in lines:
                if '"content":"q"' in line:
                    break  # the only slot is now busy

            async def queued(i: int) -> None:
                body = {"messages": [{"role": "user", "content": f"queued {i}"}], "stream": True}
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    async for _line in r.aiter_lines():
                        return  # the role chunk: queued, and leaving now

            await asyncio.gather(*(queued(i) for i in range(5)))
            wait_until(lambda: health(url)["requests_waiting"] == 0)
            prefilled_with_one = engine.prefilled_tokens
        # Leaving the block closed the first stream too.
        wait_until(lambda: idle(url))
        assert engine.prefilled_tokens == prefilled_with_one  # no queued prompt was ever prefilled

    with live_server(create_app(Settings(max_queue=8), engine=engine)) as url:
        asyncio.run(run(url))
        before = engine.prefilled_tokens
        r = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=10)
        assert r.status_code == 200 and engine.prefilled_tokens > before  # a served request does prefill
