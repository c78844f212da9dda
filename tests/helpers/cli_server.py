"""The real ``python -m server`` in a subprocess on 127.0.0.1, for tests of signals, exit codes and RSS.

It serves the fake engine through the test-only ``_LLAMASERVE_FAKE_ENGINE`` variable unless
``engine`` is None (then the real model: mark such tests ``model``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.api.engines import FAKE_ENGINE_ENV
from tests.conftest import ROOT
from tests.helpers.live import free_port, wait_healthy


@dataclass
class CliServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server did not exit in {timeout} s; log:\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the server process")


@contextmanager
def cli_server(
    tmp_path: Path, engine: dict[str, object] | None, *flags: str, ready_timeout: float = 120
) -> Iterator[CliServer]:
    port = free_port()
    env = dict(os.environ)
    env.pop(FAKE_ENGINE_ENV, None)
    if engine is not None:
        env[FAKE_ENGINE_ENV] = json.dumps(engine)
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--no-browser", *flags],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = CliServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(
            server.url,
            alive=lambda: proc.poll() is None,
            deadline=time.monotonic() + ready_timeout,
            why=server.log_tail,
        )
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
