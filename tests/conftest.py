from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.ops.logs import UVICORN_LOGGERS

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


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what a test's in-process ``main()`` did to logging.

    ``configure_logging`` points the root handler at the ``sys.stderr`` of that moment, which under
    pytest is the test's capture file; left in place, every later test logs into a closed file
    ("--- Logging error --- ValueError: I/O operation on closed file").
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    saved_uvicorn = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in UVICORN_LOGGERS}
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, (handlers, propagate) in saved_uvicorn.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
