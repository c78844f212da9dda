"""Container tests are opt-in: they build an image (minutes on a fresh machine). .ci/run opts in."""

from __future__ import annotations

import os

import pytest

OPT_IN = "RUN_CONTAINER_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(OPT_IN) == "1":
        return
    skip = pytest.mark.skip(reason=f"container tests are opt-in: set {OPT_IN}=1 (.ci/run does)")
    for item in items:
        if item.get_closest_marker("container") is not None:
            item.add_marker(skip)
