"""llama.cpp's own log, routed into Python logging as the ``server.engine.llama.cpp`` logger."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import llama_cpp

LOGGER_NAME = "server.engine.llama.cpp"
_c_log = logging.getLogger(LOGGER_NAME)
# Lines llama.cpp logs on this thread while a capture is open (a model load, say). The callback
# runs on the thread that called into llama.cpp, so each capture sees only its own load.
_capture: ContextVar[list[str] | None] = ContextVar("llamaserve_c_log_capture", default=None)


def _forward_c_log(_level: int, text: bytes | None, _user_data: object) -> None:
    if not text:
        return
    lines = _capture.get()
    if lines is not None:
        lines.append(text.decode("utf-8", "replace"))
    # Everything at DEBUG: llama.cpp narrates every load and context creation on
    # stderr, which is noise for a server. Turn on DEBUG for LOGGER_NAME to read it.
    if _c_log.isEnabledFor(logging.DEBUG):
        _c_log.debug("%s", text.decode("utf-8", "replace").rstrip("\n"))


@contextmanager
def captured_c_log() -> Iterator[list[str]]:
    """Collect what llama.cpp logs on this thread inside the block (it reports placements only there)."""
    lines: list[str] = []
    token = _capture.set(lines)
    try:
        yield lines
    finally:
        _capture.reset(token)


# llama_log_set keeps only a raw pointer, process-wide, so the ctypes callback must
# outlive every engine: a constant made once, installed by each engine and never
# taken down (an engine that restored "the previous" callback on close could hand
# llama.cpp a pointer into another, already collected, engine).
_C_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_c_log)


def route_c_log() -> None:
    """Send llama.cpp's log to :data:`LOGGER_NAME`; process-wide, idempotent, never undone."""
    llama_cpp.llama_log_set(_C_LOG_CALLBACK, ctypes.c_void_p(0))
