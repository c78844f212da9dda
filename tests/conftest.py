from __future__ import annotations

import os
from pathlib import Path

import pytest

# Fixtures shared by several test directories.
from tests.fixtures.tiny_llama3 import tiny_llama3_gguf  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

# No test writes stored responses into the user's home: apps built in-process (Settings() reads
# the environment) and servers started as subprocesses keep them in memory. A test about state
# gives its own --state-dir, which wins over the variable.
STATE_ENV = {"LLAMASERVE_STATE_DIR": ":memory:"}
_SAVED_ENV = pytest.StashKey[dict[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    # Here rather than in a fixture: test modules build Settings() at import, before any fixture runs.
    config.stash[_SAVED_ENV] = {name: os.environ.get(name) for name in STATE_ENV}
    os.environ.update(STATE_ENV)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in config.stash[_SAVED_ENV].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
