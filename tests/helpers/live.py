"""A real uvicorn server on 127.0.0.1, in a thread, for tests that need real sockets.

httpx's ASGITransport buffers whole bodies, so streaming and disconnects need this.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


def wait_healthy(url: str, *, alive: Callable[[], bool], deadline: float, why: Callable[[], str]) -> None:
    """Poll ``url``/health until it answers 200; fail with ``why()`` if the server dies or time runs out."""
    while True:
        assert alive(), f"server exited early:\n{why()}"
        assert time.monotonic() < deadline, f"server did not become ready:\n{why()}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: FastAPI, *, ready_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL once /health says ok."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(
            url, alive=thread.is_alive, deadline=time.monotonic() + ready_timeout, why=lambda: "see the test's log"
        )
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
