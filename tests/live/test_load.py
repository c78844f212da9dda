"""Load over real sockets: many concurrent streaming clients, nothing lost, nothing leaked.

The server is the real CLI in a subprocess, so its RSS can be read apart from the clients'.
Counts are fixed and every wait is bounded; nothing here measures speed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli_server import CliServer, cli_server

pytestmark = pytest.mark.live

REPLY = "Streaming under load, token by token, to the very end."


@dataclass
class Outcome:
    status: int
    text: str = ""
    done: bool = False
    error: str | None = None
    retry_after: str | None = None
    body: str = ""


async def one_stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int | None = None) -> Outcome:
    body: dict[str, object] = {"messages": [{"role": "user", "content": f"client {i}"}], "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        out = Outcome(r.status_code)
        if r.status_code != 200:
            out.body = (await r.aread()).decode()
            out.retry_after = r.headers.get("retry-after")
            return out
        event = "message"
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                if event == "error":
                    out.error = data
                elif data == "[DONE]":
                    out.done = True
                else:
                    for choice in json.loads(data)["choices"]:
                        out.text += choice["delta"].get("content") or ""
                event = "message"
        return out


async def run_clients(url: str, clients: int, rounds: int, max_tokens: int | None = None) -> list[Outcome]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker(c: int) -> list[Outcome]:
            return [await one_stream(client, url, c * rounds + r, max_tokens) for r in range(rounds)]

        per_client = await asyncio.gather(*(worker(c) for c in range(clients)))
    return [o for outcomes in per_client for o in outcomes]


def wait_idle(server: CliServer, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, object] = httpx.get(f"{server.url}/health", timeout=5).json()
        if health["slots_busy"] == 0 and health["requests_waiting"] == 0:
            return health
        assert time.monotonic() < deadline, f"server never went idle: {health}"
        time.sleep(0.05)


def test_64_clients_x_4_streams_all_complete_and_nothing_leaks(tmp_path: Path) -> None:
    engine = {"n_slots": 8, "reply": REPLY, "step_delay": 0.001}
    with cli_server(tmp_path, engine, "--parallel", "8", "--max-queue", "256") as server:
        # One warm-up round at the same concurrency first, so the RSS baseline includes what the first
        # requests allocate once (imports, buffers, pools); growth after that would be a leak.
        warm = asyncio.run(run_clients(server.url, 64, 1))
        assert all(o.done for o in warm)
        wait_idle(server)
        rss_before = server.rss_bytes()

        outcomes = asyncio.run(run_clients(server.url, 64, 4))

        assert len(outcomes) == 256
        bad = [o for o in outcomes if o.status != 200 or o.error or not o.done]
        assert not bad, bad[:3]
        assert all(o.text == REPLY for o in outcomes)
        health = wait_idle(server)
        assert health["status"] == "ok"
        rss_after = server.rss_bytes()
        assert rss_after <= rss_before * 1.10, (rss_before, rss_after)


def test_a_small_queue_answers_429_with_retry_after_and_nothing_else_fails(tmp_path: Path) -> None:
    engine = {"n_slots": 2, "reply": REPLY, "step_delay": 0.005}
    with cli_server(tmp_path, engine, "--parallel", "2", "--max-queue", "4") as server:
        outcomes = asyncio.run(run_clients(server.url, 64, 1))
        ok = [o for o in outcomes if o.status == 200]
        rejected = [o for o in outcomes if o.status == 429]
        assert len(ok) + len(rejected) == 64, [o.status for o in outcomes]
        assert ok and rejected  # 64 at once cannot all fit in 2 slots + 4 queued
        assert all(o.done and o.error is None and o.text == REPLY for o in ok)
        for o in rejected:
            assert o.retry_after is not None and int(o.retry_after) >= 1
            err = json.loads(o.body)["error"]
            assert err["code"] == "queue_full" and err["type"] == "rate_limit_exceeded"
        wait_idle(server)
        # And it serves again once the burst is gone.
        again = asyncio.run(run_clients(server.url, 2, 1))
        assert all(o.done for o in again)


@pytest.mark.model
def test_16_clients_x_2_streams_on_the_real_model(tmp_path: Path) -> None:
    flags = ("--parallel", "4", "--ctx-size", "512", "--max-queue", "64", "--threads", "2")
    with cli_server(tmp_path, None, *flags) as server:
        outcomes = asyncio.run(run_clients(server.url, 16, 2, max_tokens=8))
        assert len(outcomes) == 32
        bad = [o for o in outcomes if o.status != 200 or o.error or not o.done]
        assert not bad, bad[:3]
        assert all(o.text for o in outcomes)
        wait_idle(server)
