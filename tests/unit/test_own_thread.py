"""run_in_own_thread: the work's result or error, from a thread that has ended by then."""

from __future__ import annotations

import threading

import pytest

from server.engine.llama.own_thread import run_in_own_thread


def test_returns_what_the_work_returns_from_a_thread_that_has_ended() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert run_in_own_thread(work, name="t") == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_raises_what_the_work_raised() -> None:
    def work() -> int:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_in_own_thread(work, name="t")
