from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Fixtures shared by several test directories.
from tests.fixtures.tiny_llama3 import tiny_llama3_gguf  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

# No test writes stored responses into the user's home: apps built in-process keep them in memory
# (Settings() reads LLAMASERVE_STATE_DIR), and a server started as a subprocess without the
# LLAMASERVE_* variables finds its per-user default under a temporary XDG_DATA_HOME. A test about
# state gives its own --state-dir.
_STATE_ENV = ("LLAMASERVE_STATE_DIR", "XDG_DATA_HOME")
_SAVED_ENV = pytest.StashKey[tuple[dict[str, str | None], str]]()


def pytest_configure(config: pytest.Config) -> None:
    # Here rather than in a fixture: test modules build Settings() at import, before any fixture runs.
    data_home = tempfile.mkdtemp(prefix="llamaserve-tests-xdg-")
    config.stash[_SAVED_ENV] = ({name: os.environ.get(name) for name in _STATE_ENV}, data_home)
    os.environ["LLAMASERVE_STATE_DIR"] = ":memory:"
    os.environ["XDG_DATA_HOME"] = data_home


def pytest_unconfigure(config: pytest.Config) -> None:
    saved, data_home = config.stash[_SAVED_ENV]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(data_home, ignore_errors=True)
