"""`llamaserve rpc-worker` refuses what is unsafe before it serves anything."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def rpc_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "rpc-worker", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_non_loopback_address_needs_allow_remote() -> None:
    r = rpc_worker("--host", "0.0.0.0", "--port", "50999")
    assert r.returncode == 2
    assert "--allow-remote" in r.stderr and "no authentication" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_port_is_exit_code_2() -> None:
    r = rpc_worker("--port", "70000")
    assert r.returncode == 2 and "not a port" in r.stderr


def test_help_says_what_it_serves() -> None:
    r = rpc_worker("--help")
    assert r.returncode == 0 and "--allow-remote" in r.stdout and "--cache" in r.stdout
