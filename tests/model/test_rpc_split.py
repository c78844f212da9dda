"""One model over two machines, on loopback: llama.cpp's RPC backend behind `rpc-worker` and `--rpc`.

Every process here is a real one: two `llamaserve rpc-worker` processes on free 127.0.0.1 ports
and a head (`python -m server --rpc ...`), so that a worker's death can be watched from outside
and no test process ever registers an RPC device (ggml's device registry is process-wide).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.engine.llama.rpc import probe, rpc_supported
from tests.conftest import ROOT
from tests.helpers.cli_server import cli_server
from tests.helpers.live import free_port

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(not rpc_supported(), reason="llama.cpp built without RPC (make install builds it with)"),
]

BODY = {"prompt": "The lighthouse keeper", "max_tokens": 32, "temperature": 0, "ignore_eos": True}
HEAD_FLAGS = ("--parallel", "1", "--ctx-size", "256")


@dataclass
class Worker:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def workers(tmp_path: Path, n: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(n):
            port = free_port()
            log = tmp_path / f"worker-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "server", "rpc-worker", "--port", str(port), "--threads", "1"],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(Worker(f"127.0.0.1:{port}", proc, log))
        deadline = time.monotonic() + 60
        for w in started:
            while probe(w.endpoint, timeout=0.5) is not None:
                assert w.proc.poll() is None, f"worker exited:\n{w.log_text()}"
                assert time.monotonic() < deadline, f"worker did not listen:\n{w.log_text()}"
                time.sleep(0.1)
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.terminate()
                try:
                    w.proc.wait(10)
                except subprocess.TimeoutExpired:
                    w.proc.kill()


def completion(url: str) -> dict[str, object]:
    r = httpx.post(f"{url}/v1/completions", json=BODY, timeout=120)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_a_model_split_over_two_workers_generates_what_it_does_locally(tmp_path: Path) -> None:
    with cli_server(tmp_path, None, *HEAD_FLAGS) as local:
        expected = completion(local.url)
    with (
        workers(tmp_path, 2) as (a, b),
        cli_server(tmp_path, None, *HEAD_FLAGS, "--rpc", f"{a.endpoint},{b.endpoint}", "--tensor-split", "1,1") as head,
    ):
        got = completion(head.url)
        model = httpx.get(f"{head.url}/v1/models", timeout=10).json()["data"][0]
        metrics = httpx.get(f"{head.url}/metrics", timeout=10).text
        head_log = head.log_tail()
    assert got["choices"] == expected["choices"]  # type: ignore[comparison-overlap]
    assert got["usage"]["completion_tokens"] == 32  # type: ignore[index]
    # The layers really are on the workers: llama.cpp put model buffers there, and each worker saw the head.
    assert model["placement"]["split"] is True
    for w in (a, b):
        assert any(d.endswith(f"[{w.endpoint}]") for d in model["placement"]["devices"]), model
        assert f'llamaserve_rpc_worker_up{{endpoint="{w.endpoint}"' in metrics
        assert "Accepted client connection" in w.log_text()
    assert 'devices="3"' in metrics, "CPU and two workers"
    assert "model weights on RPC" in head_log


def test_an_unreachable_worker_is_exit_code_2_with_one_paragraph(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    r = subprocess.run(
        [sys.executable, "-m", "server", "--no-browser", "--port", "0", "--rpc", nobody],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert nobody in r.stderr and "cannot be reached" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_worker_killed_mid_generation_ends_the_head_and_the_stream(tmp_path: Path) -> None:
    with (
        workers(tmp_path, 2) as (a, b),
        cli_server(tmp_path, None, *HEAD_FLAGS, "--ctx-size", "2048", "--rpc", f"{a.endpoint},{b.endpoint}") as head,
    ):
        body = {**BODY, "max_tokens": 1500, "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", f"{head.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    break
            os.kill(b.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            try:
                rest = list(lines)
            except httpx.HTTPError:
                rest = []  # the connection closed mid-stream: what the client sees when the head is gone
        assert "data: [DONE]" not in rest, "the stream must not look complete"
        code = head.wait(timeout=15)
        assert code != 0
        assert time.monotonic() - killed < 15 and killed - started < 60
        assert b.endpoint in head.log_tail() or code < 0  # named in the log, unless llama.cpp aborted first
