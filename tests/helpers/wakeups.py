"""Counting how often the engine thread wakes an event loop (``call_soon_threadsafe`` calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Wakeups:
    count: int = 0


@contextmanager
def counting_wakeups(loop: asyncio.AbstractEventLoop) -> Iterator[Wakeups]:
    """Count ``loop.call_soon_threadsafe`` calls inside the block (the method itself still runs)."""
    wakeups = Wakeups()
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        wakeups.count += 1
        return real(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        yield wakeups
    finally:
        del loop.call_soon_threadsafe
