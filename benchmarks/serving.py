"""Servers the benchmarks start and stop: ours or llama.cpp's, on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(cmd: list[str], port: int, *, ready_seconds: float = 180) -> Iterator[str]:
    """Run ``cmd`` (a server listening on ``port``) until the block ends; yield its URL once /health is 200."""
    # The log goes to a file: an unread pipe fills up and blocks a chatty server (llama-server) mid-run.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            yield _wait_ready(proc, f"http://127.0.0.1:{port}", errors, ready_seconds)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, errors: IO[bytes], ready_seconds: float) -> str:
    deadline = time.monotonic() + ready_seconds
    while True:
        if proc.poll() is not None:
            errors.seek(0)
            raise SystemExit(f"{proc.args!r} exited: {errors.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{proc.args!r} did not become ready in {ready_seconds:g} s")
        time.sleep(0.25)
