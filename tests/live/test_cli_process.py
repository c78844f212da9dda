"""``python -m server`` as a subprocess: each bad configuration gives one paragraph and exit 2;
``-p`` prints exactly the completion; the server serves on the port it bound."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.engine.llama.model_files import bundled_model_path
from server.state import DB_FILE, ResponseStore, StoredResponse
from tests.conftest import ROOT, STATE_ENV
from tests.helpers.cli_server import cli_server
from tests.helpers.gguf_files import write_header_only_gguf, write_split_copy
from tests.helpers.live import wait_healthy

pytestmark = pytest.mark.live


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMASERVE_", "_LLAMASERVE_"))}
    env.update(STATE_ENV)  # no stored responses in the home of whoever runs the tests
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "--no-browser", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, nothing on stdout, and one paragraph on stderr that says what is wrong."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llamaserve: ")
    for fragment in fragments:
        assert fragment in lines[0]


# ---- bad configuration --------------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    assert_refused(run_cli("-m", str(tmp_path / "nope.gguf")), "Model file not found", "nope.gguf")


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert_refused(run_cli("-m", str(path)), "is not a GGUF file")


def test_truncated_gguf(tmp_path: Path) -> None:
    cut = tmp_path / "partial.gguf"
    with bundled_model_path().open("rb") as f:
        cut.write_bytes(f.read(3_000_000))  # the header is whole; the tensor data is not
    assert_refused(run_cli("-m", str(cut)), "truncated or corrupt", "Download it again")


def test_unknown_config_key_suggests_the_right_one(tmp_path: Path) -> None:
    config = tmp_path / "llamaserve.toml"
    config.write_text("ctx_size = 512\nparalel = 2\n")
    assert_refused(run_cli("--config", str(config)), "Unknown setting 'paralel'", "Did you mean 'parallel'?")


def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_refused(run_cli("--port", str(port), "-c", "256", "-np", "1"), f"Port {port}", "already in use")


def test_not_enough_memory_for_the_kv_cache(tmp_path: Path) -> None:
    # Metadata of a huge model: 1000 layers x 64 KV heads x 256 dims x 2 bytes = 32 MiB per token.
    path = write_header_only_gguf(
        tmp_path / "huge.gguf",
        context_length=131072,
        block_count=1000,
        embedding_length=8192,
        head_count=64,
        head_count_kv=64,
    )
    assert_refused(run_cli("-m", str(path), "-c", "0", "-np", "4"), "Not enough memory for the KV cache", "Lower")


def test_directory_as_model(tmp_path: Path) -> None:
    write_header_only_gguf(tmp_path / "one.gguf")
    assert_refused(run_cli("-m", str(tmp_path)), "is a directory", "one.gguf")


def test_glob_as_model(tmp_path: Path) -> None:
    write_header_only_gguf(tmp_path / "one.gguf")
    assert_refused(run_cli("-m", str(tmp_path / "*.gguf")), "not a pattern", "one.gguf")


def test_bad_value_from_the_environment() -> None:
    env = _env() | {"LLAMASERVE_PARALLEL": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert_refused(result, "LLAMASERVE_PARALLEL", "greater than or equal to 1")


def test_corrupt_state_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_FILE).write_bytes(b"not a database, only garbage " * 400)
    assert_refused(
        run_cli("--state-dir", str(state), "-c", "256", "-np", "1"), str(state / DB_FILE), "is corrupt", "Move it aside"
    )


def test_state_dir_that_cannot_be_written(tmp_path: Path) -> None:
    # Under a regular file: no directory can be made there, even as root (where chmod stops nothing).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_refused(
        run_cli("--state-dir", str(blocker / "state"), "-c", "256", "-np", "1"),
        "cannot be written",
        "--state-dir :memory:",
    )


def test_a_served_state_dir_keeps_what_was_stored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seeded = ResponseStore.open(str(state), max_age_days=None, max_bytes=None)
    item = {"id": "msg_1", "type": "message", "role": "user", "content": "hi"}
    record = StoredResponse("resp_1", None, 1, "m", None, {"id": "resp_1"}, [item], [item])
    seeded.put(record)
    seeded.close()
    with cli_server(tmp_path, {}, "--state-dir", str(state)) as server:
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "\nllamaserve_responses_stored 1.0\n" in metrics
        server.proc.terminate()
        assert server.wait() == 0
    reopened = ResponseStore.open(str(state), max_age_days=None, max_bytes=None)
    try:
        assert reopened.get("resp_1", None) == record
    finally:
        reopened.close()


# ---- help and version -----------------------------------------------------------------------------


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("-m MODEL", "-c CTX_SIZE", "-np PARALLEL", "-ngl N_GPU_LAYERS", "--api-key-file", "-p PROMPT"):
        assert flag in result.stdout
    assert "(default: 8080)" in result.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"llamaserve \d+\.\d+\.\d+\n", version.stdout)


# ---- the real model -----------------------------------------------------------------------------


def greedy_completion(prompt: str, n: int) -> str:
    """What -p should print, computed by driving the engine directly (no scheduler, no CLI)."""
    from server.engine.base import SamplingParams
    from server.engine.llama.engine import LlamaEngine

    engine = LlamaEngine(str(bundled_model_path()), model_id="check", n_slots=1, n_ctx_per_seq=256)
    try:
        tokens = engine.tokenize(prompt, add_special=True, parse_special=True)
        engine.begin(0, tokens, SamplingParams(temperature=0.0))
        out = b""
        produced = 0
        while produced < n:
            for step in engine.step():
                if step.token in engine.info.eog_tokens:
                    return out.decode("utf-8", errors="replace")
                out += engine.token_bytes(step.token)
                produced += 1
        return out.decode("utf-8", errors="replace")
    finally:
        engine.close()


@pytest.mark.model
def test_prompt_prints_exactly_the_completion_and_clamps_the_context() -> None:
    prompt = "The capital of France is"
    # -c beyond SmolLM2's 8192 trained tokens: documented to warn and clamp, not refuse.
    result = run_cli("-p", prompt, "-n", "8", "--temp", "0", "-c", "100000", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy_completion(prompt, 8)
    assert result.stdout.strip()
    assert "is larger than the 8192 tokens" in result.stderr  # logs go to stderr only
    assert "8 generated" in result.stderr


@contextmanager
def cli_serving(log: Path, *args: str, timeout: float = 180) -> Iterator[str]:
    """Run the server on --port 0 and find its URL in its log, as a person reading stderr would."""
    with (
        log.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-m", "server", "--no-browser", "--port", "0", *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + timeout
            url = None
            while url is None:
                assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, "server never said where it listens"
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", log.read_text())
                url = m.group(1) if m else None
                time.sleep(0.1)
            wait_healthy(url, alive=lambda: proc.poll() is None, deadline=deadline, why=log.read_text)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.mark.model
def test_serves_the_bundled_model_under_its_alias_on_the_bound_port(tmp_path: Path) -> None:
    with cli_serving(tmp_path / "server.log", "-a", "smol", "-c", "256", "-np", "1") as url:
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smol"]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.model
def test_two_models_from_one_config_routed_by_name(tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(
        'parallel = 1\n\n[[models]]\nalias = "smol-short"\nctx_size = 128\n\n'
        '[[models]]\nalias = "smol-long"\nctx_size = 512\nchat_template = "chatml"\n'
    )
    with cli_serving(tmp_path / "server.log", "--config", str(config)) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        assert ids == ["smol-short", "smol-long"]
        prompt = "word " * 200  # about 200 tokens: too long for smol-short's 128, fine for smol-long's 512
        for name, status in (("smol-short", 400), ("smol-long", 200)):
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2},
                timeout=120,
            )
            assert r.status_code == status, r.text
            if status == 200:
                assert r.json()["model"] == name
            else:
                assert "maximum context length is 128 tokens" in r.json()["error"]["message"]
        missing = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=30,
        )
        assert missing.status_code == 404
    log = (tmp_path / "server.log").read_text()
    assert "model smol-short:" in log and "model smol-long:" in log


@pytest.mark.model
def test_split_model_loads_from_any_part(tmp_path: Path) -> None:
    parts = write_split_copy(bundled_model_path(), tmp_path, "smol", max_tensors=150)
    assert [p.name for p in parts] == ["smol-00001-of-00002.gguf", "smol-00002-of-00002.gguf"]
    prompt = "The capital of France is"
    # Given the second part, the model still loads from the first, which names the rest.
    result = run_cli("-m", str(parts[1]), "-p", prompt, "-n", "6", "--temp", "0", "-c", "256", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy_completion(prompt, 6)  # the same model as the single file
    parts[1].unlink()
    assert_refused(run_cli("-m", str(parts[0])), "split in 2 files", "smol-00002-of-00002.gguf is missing")
