"""Graceful shutdown of the real CLI process: SIGTERM during live streams.

The server runs as ``python -m server`` in a subprocess (signals and the exit code are the
point), serving the fake engine through the test-only ``_LLAMASERVE_FAKE_ENGINE`` variable.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli_server import cli_server

pytestmark = pytest.mark.live

STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


@dataclass
class StreamResult:
    started: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    done: bool = False  # ended with data: [DONE]
    error: dict[str, object] | None = None  # the final SSE error event, if any
    failure: str | None = None  # anything else: a broken connection, a bad status


def read_stream(url: str, result: StreamResult) -> None:
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=STREAM, timeout=60) as r:
            if r.status_code != 200:
                result.failure = f"status {r.status_code}"
                result.started.set()
                return
            event = "message"
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                    result.started.set()
                    if event == "error":
                        result.error = json.loads(data)
                    elif data == "[DONE]":
                        result.done = True
                    else:
                        chunk = json.loads(data)
                        for choice in chunk["choices"]:
                            result.text += choice["delta"].get("content") or ""
                    event = "message"
    except httpx.HTTPError as exc:
        result.failure = repr(exc)
    finally:
        result.started.set()


def start_streams(url: str, n: int) -> tuple[list[StreamResult], list[threading.Thread]]:
    results = [StreamResult() for _ in range(n)]
    threads = [threading.Thread(target=read_stream, args=(url, r), daemon=True) for r in results]
    for t in threads:
        t.start()
    for r in results:
        assert r.started.wait(30), "a stream never started"
    return results, threads


def test_sigterm_lets_8_running_streams_finish_then_exits_0(tmp_path: Path) -> None:
    reply = "Eight streams, each finishing its whole answer."
    engine = {"n_slots": 4, "step_delay": 0.03, "reply": reply}
    with cli_server(tmp_path, engine, "--shutdown-timeout", "60", "--max-queue", "16") as server:
        results, threads = start_streams(server.url, 8)
        assert all(r.failure is None for r in results), [r.failure for r in results]
        server.proc.send_signal(signal.SIGTERM)
        # While draining: the socket still answers, /health says so, and new work is refused with 503.
        deadline = time.monotonic() + 10
        while True:
            health = httpx.get(f"{server.url}/health", timeout=5)
            if health.json()["status"] == "draining":
                break
            assert time.monotonic() < deadline, "the server never said it was draining"
            time.sleep(0.02)
        assert health.status_code == 503
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=STREAM, timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        for t in threads:
            t.join(60)
        assert server.wait() == 0, server.log.read_text()[-3000:]
    for r in results:
        assert r.failure is None and r.error is None, (r.failure, r.error)
        assert r.done and r.text == reply


def test_streams_still_running_at_the_timeout_get_a_final_error_event(tmp_path: Path) -> None:
    engine = {"n_slots": 4, "step_delay": 0.02, "reply": "z" * 100_000}
    with cli_server(tmp_path, engine, "--shutdown-timeout", "1") as server:
        results, threads = start_streams(server.url, 8)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.wait() == 0, server.log.read_text()[-3000:]
        took = time.monotonic() - sent
    for r in results:
        assert r.failure is None, r.failure
        assert not r.done
        assert r.error is not None and r.error["error"]["code"] == "service_unavailable"  # type: ignore[index]
    # Running ones had produced text; queued ones may have none. Either way each ended cleanly.
    assert sum(1 for r in results if r.text) >= 4
    assert took < 30  # bounded by --shutdown-timeout, not by the 100,000-character replies
    assert "did not finish in time" in server.log.read_text()


def test_a_second_signal_ends_the_wait_at_once(tmp_path: Path) -> None:
    engine = {"n_slots": 2, "step_delay": 0.02, "reply": "z" * 100_000}
    with cli_server(tmp_path, engine, "--shutdown-timeout", "600") as server:
        results, threads = start_streams(server.url, 2)
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGINT)
        for t in threads:
            t.join(60)
        assert server.wait(60) == 0, server.log.read_text()[-3000:]
    assert all(r.error is not None for r in results), [(r.failure, r.done) for r in results]


def test_an_idle_server_exits_0_on_sigterm(tmp_path: Path) -> None:
    with cli_server(tmp_path, {"n_slots": 1}) as server:
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
