"""The container image, built and run for real with podman (``-m container``; .ci/run runs it).

The image is built by ``scripts/build-image.sh``, the script behind ``make image`` (podman's layer
cache makes a rebuild after ``make image`` take seconds), on the Debian stand-in base of
``scripts/container-base.sh`` when no registry is reachable. Each test removes what it created.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.helpers.live import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

IMAGE = "localhost/llamaserve:container-test"
KEY = "sk-container-test"
CONF = ROOT / "deploy" / "podman" / "containers.conf"
BASE_CACHE = Path(os.environ.get("LLAMASERVE_CACHE", Path.home() / ".cache" / "llamaserve")) / "container-base"
BUILD_SECONDS = 1500  # a fresh machine compiles no llama.cpp here, but may debootstrap the base (~2 min)


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=_env())
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def _why_no_image() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/test-deps.sh installs it as root on Debian)"
    has_base = any(BASE_CACHE.glob("*.tar")) or (shutil.which("debootstrap") is not None and os.geteuid() == 0)
    if not has_base and not os.environ.get("PYTHON_IMAGE"):
        return "no base image: no cached debootstrap base, and debootstrap (as root) is missing to build one"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    why = _why_no_image()
    if why is not None:
        pytest.skip(why)
    env = {**_env(), "IMAGE": IMAGE}
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        env=env,
        cwd=ROOT,
    )
    assert build.returncode == 0, f"the image did not build:\n{build.stderr[-6000:]}"
    print(f"image built in {time.monotonic() - started:.0f} s")  # noqa: T201 (shown with -s)
    yield IMAGE
    podman("rmi", "-f", IMAGE, check=False)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"# the container test's key\n{KEY}\n")
    path.chmod(0o644)  # read by uid 10001 inside the container
    return path


@dataclass
class Container:
    name: str
    url: str


@pytest.fixture
def server(image: str, keys_file: Path) -> Iterator[Container]:
    name = f"llamaserve-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, "--read-only",
        "-p", f"127.0.0.1:{port}:8080",
        "-v", f"{keys_file}:/run/secrets/keys:ro",
        image, "--api-key-file", "/run/secrets/keys", "--parallel", "2", "--ctx-size", "1024",
        # Long enough for the drain test's reply even on a loaded 2-core machine (~4 tokens/s).
        "--shutdown-timeout", "90",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"the container stopped ({state}):\n{podman('logs', name).stderr[-4000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in time:\n{podman('logs', name).stderr[-4000:]}"
            time.sleep(0.5)
        yield Container(name, url)
    finally:
        # -v: the anonymous /models volume goes with the container.
        podman("rm", "-f", "-v", name, check=False, timeout=60)


AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "max_tokens": 16,
    "temperature": 0,
}


def test_it_answers_a_chat_request_with_a_key_from_the_key_file(server: Container) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "SmolLM2-135M-Instruct.Q4_1"  # the bundled model, installed in the image
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
    assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 401


def test_it_runs_as_uid_10001_on_a_read_only_root(server: Container) -> None:
    assert podman("exec", server.name, "id", "-u").stdout.strip() == "10001"
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", server.name).stdout.strip() == "true"
    wrote = podman("exec", server.name, "touch", "/app/written", check=False)
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr
    # The probes answer without a key, and the image's HEALTHCHECK (Docker format) passes.
    assert httpx.get(f"{server.url}/health/live").json()["status"] == "alive"
    health = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE).stdout)
    assert "/health" in " ".join(health["Test"])
    assert podman("healthcheck", "run", server.name, check=False).returncode == 0


@dataclass
class Stream:
    first_token: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    done: bool = False
    failure: str | None = None


def _read_stream(url: str, stream: Stream, max_tokens: int) -> None:
    body = {**CHAT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
            if r.status_code != 200:
                stream.failure = f"status {r.status_code}"
                return
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    if line.startswith("event: error"):
                        stream.failure = "an SSE error event"
                    continue
                data = line[6:]
                if data == "[DONE]":
                    stream.done = True
                    continue
                if stream.failure is not None:  # the data line of an error event
                    stream.failure += f": {data}"
                    continue
                stream.chunks += 1
                for choice in json.loads(data)["choices"]:
                    stream.text += choice["delta"].get("content") or ""
                    stream.finish_reason = choice.get("finish_reason") or stream.finish_reason
                    stream.first_token.set()
    except httpx.HTTPError as exc:
        stream.failure = repr(exc)
    finally:
        stream.first_token.set()


def test_podman_stop_drains_a_running_stream_and_exits_0(server: Container) -> None:
    stream = Stream()
    reader = threading.Thread(target=_read_stream, args=(server.url, stream, 200), daemon=True)
    reader.start()
    assert stream.first_token.wait(60) and stream.failure is None, stream.failure
    chunks_before_stop = stream.chunks
    # -t: podman's SIGKILL comes later than the server's --shutdown-timeout.
    stop = podman("stop", "-t", "120", server.name, timeout=180)
    reader.join(60)
    assert stream.failure is None, stream.failure
    # The whole reply arrived, most of it after the stop: the drain let it finish instead of cutting it.
    assert stream.done and stream.finish_reason == "length", (stream.done, stream.finish_reason)
    assert stream.chunks > chunks_before_stop
    assert stop.returncode == 0
    assert podman("inspect", "--format", "{{.State.ExitCode}}", server.name).stdout.strip() == "0"
    logs = podman("logs", server.name).stderr
    assert "received SIGTERM: draining" in logs
    assert "did not finish in time" not in logs


def test_rpc_worker_as_the_container_command(image: str) -> None:
    name = f"llamaserve-rpc-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, "--read-only", "--no-healthcheck", "-p", f"127.0.0.1:{port}:50052",
        image, "rpc-worker", "--allow-remote", "--host", "0.0.0.0", "--port", "50052", "--threads", "1",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                status = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert status == "running", f"the worker stopped:\n{podman('logs', name).stderr[-3000:]}"
                assert time.monotonic() < deadline, "the worker never listened"
                time.sleep(0.5)
        # The entrypoint passed no server flags (--port 8080, --no-browser) to rpc-worker.
        assert "unrecognized arguments" not in podman("logs", name).stderr
    finally:
        podman("rm", "-f", "-v", name, check=False, timeout=60)
