"""Graceful shutdown: SIGTERM or Ctrl+C drains the server before uvicorn stops it.

Left to itself, uvicorn answers SIGTERM by closing its listening socket at once
(new clients get "connection refused", not a 503), waits for open connections
with no limit, and finally raises the signal again, so the process dies by
SIGTERM instead of exiting 0. (Our streams, :mod:`server.api.sse`, ignore
``should_exit``: they end with the request, so none is cut without a final event.)

:class:`GracefulServer` changes the order. On the first signal it :func:`drain`\\ s:

1. ``/health`` says ``draining`` (503) and new generation requests get 503,
   while the socket stays open so load balancers see the state;
2. running and queued requests finish, up to ``--shutdown-timeout`` seconds;
3. whatever is left is ended by the scheduler with a ``service_unavailable``
   error, which a stream receives as its final SSE ``error`` event;

and only then sets ``should_exit``: uvicorn closes the socket, the streams are
already complete, the lifespan frees the model, and the process exits 0. A
second signal skips the rest of the wait (step 2); a third forces uvicorn out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn

from server.api.state import AppState, AppStatus

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After the drain, the last events still have to be written to the sockets.
FLUSH_GRACE_SECONDS = 5.0


async def drain(state: AppState, timeout: float, hurry: asyncio.Event | None = None) -> int:
    """Stop admitting, wait up to ``timeout`` s for the work in hand, then end the rest.

    Returns how many requests were still running or queued when the wait ended.
    """
    state.status = AppStatus.DRAINING
    scheduler = state.registry  # every model, one or several
    scheduler.stop_accepting()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hurry = hurry or asyncio.Event()
    while scheduler.busy + scheduler.waiting > 0 and loop.time() < deadline and not hurry.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), 0.05)
    left = scheduler.busy + scheduler.waiting
    if left:
        log.warning("shutdown: ending %d request(s) that did not finish in time", left)
    # Pushes a final error event to every request still running or queued.
    await asyncio.to_thread(scheduler.stop)
    return left


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains ``state`` on the first SIGTERM/SIGINT and then exits 0."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state
        self.signals_seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hurry: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._hurry = asyncio.Event()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own version raises the signal again on the way out; a drained server exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler only records and hands over: the work (and the logging, whose locks the
        # interrupted code may hold) happens on the event loop.
        self.signals_seen += 1
        if self._loop is None or self.signals_seen >= 3:
            self.should_exit = True
            self.force_exit = self.signals_seen >= 3
            return
        self._loop.call_soon_threadsafe(self._on_signal, signal.Signals(sig).name, self.signals_seen)

    @property
    def shutdown_timeout(self) -> float:
        return float(self.app_state.settings.shutdown_timeout)

    def _on_signal(self, name: str, count: int) -> None:
        if count == 1:
            log.info(
                "received %s: draining (new requests get 503; running ones have up to %g s)",
                name,
                self.shutdown_timeout,
            )
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())
        else:
            log.info("received %s again: ending the remaining requests now", name)
            if self._hurry is not None:
                self._hurry.set()

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.app_state, self.shutdown_timeout, self._hurry)
        except Exception:
            log.exception("draining failed; stopping anyway")
        finally:
            self.should_exit = True


def serve(config: uvicorn.Config, sockets: list[Any] | None = None) -> None:
    """Run ``config.app`` (built by ``create_app``) under :class:`GracefulServer` until a signal drains it."""
    app: Any = config.app
    state: AppState = app.state.llamaserve
    # A backstop only: after the drain every stream has its final event, and this bounds the wait
    # for clients that stopped reading.
    config.timeout_graceful_shutdown = int(FLUSH_GRACE_SECONDS)
    GracefulServer(config, state).run(sockets=sockets)
