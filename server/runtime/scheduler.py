"""Admission, a bounded wait queue, slot choice, cancellation and the step loop.

One engine thread owns the engine. The asyncio side talks to it only through
:meth:`Scheduler.submit` and :meth:`RequestHandle.cancel`; events come back
through ``loop.call_soon_threadsafe`` into each request's own asyncio queue. A
cancelled request is released at the start of the next engine step, so a
client that disconnects frees its slot and KV cells within one step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from server.engine.base import Engine, EngineError, FinishReason, StepOutput
from server.errors import QueueFullError, RequestTimeoutError, ServiceUnavailableError
from server.runtime.events import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    NoHooks,
    SchedulerHooks,
    TokenEvent,
)
from server.runtime.textstream import TextStream

log = logging.getLogger(__name__)


class RequestHandle:
    """The asyncio side of one request: iterate :meth:`events`, or :meth:`cancel` it."""

    def __init__(self, scheduler: Scheduler, seq_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduler = scheduler
        self.seq_id = seq_id
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.done = False
        self.admitted = asyncio.Event()

    def _push(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def _mark_admitted(self) -> None:
        self._loop.call_soon_threadsafe(self.admitted.set)

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._scheduler._cancel(self.seq_id)

    async def events(self) -> AsyncIterator[Event]:
        """Yield events until the request finishes; leaving early cancels it."""
        try:
            while True:
                event = await self._queue.get()
                yield event
                if isinstance(event, FinishEvent | ErrorEvent):
                    self.done = True
                    return
        finally:
            self.cancel()


@dataclass
class _Sequence:
    request: GenerationRequest
    handle: RequestHandle
    submitted_at: float
    stream: TextStream
    slot: int = -1
    cached: int = 0
    generated: int = 0
    started_at: float = 0.0
    last_token_at: float = 0.0
    first_token_at: float | None = None


@dataclass
class _Shared:
    """State both threads touch; guarded by ``Scheduler._cond``."""

    waiting: deque[_Sequence] = field(default_factory=deque)
    cancelled: set[int] = field(default_factory=set)
    running: bool = True
    accepting: bool = True


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 64,
        hooks: SchedulerHooks | None = None,
        request_timeout: float = 0.0,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.request_timeout = request_timeout  # seconds from submit to the last token; 0 = none
        self.hooks: SchedulerHooks = hooks or NoHooks()
        self.n_slots = engine.info.n_slots
        self._eog = engine.info.eog_tokens
        self._cond = threading.Condition()
        self._shared = _Shared()
        self._ids = itertools.count(1)
        self._active: dict[int, _Sequence] = {}  # slot -> sequence; engine thread only
        self._slot_last_used = [0.0] * self.n_slots
        self._avg_request_seconds = 2.0
        self._busy = 0  # slots busy, read by the asyncio side for admission decisions
        self._thread: threading.Thread | None = None

    # ---- asyncio side -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llamaserve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._shared.running = False
            self._shared.accepting = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def stop_accepting(self) -> None:
        with self._cond:
            self._shared.accepting = False

    @property
    def waiting(self) -> int:
        return len(self._shared.waiting)

    @property
    def busy(self) -> int:
        return self._busy

    def retry_after(self) -> int:
        """Seconds until a queued request would likely start, from the recent drain rate."""
        ahead = len(self._shared.waiting) + 1
        return max(1, math.ceil(self._avg_request_seconds * ahead / self.n_slots))

    def submit(self, request: GenerationRequest) -> RequestHandle:
        loop = asyncio.get_running_loop()
        with self._cond:
            if not self._shared.accepting:
                raise ServiceUnavailableError("The server is shutting down.")
            # Waiting requests that free slots will take at the next step are not "queued".
            queued = len(self._shared.waiting) - (self.n_slots - self._busy)
            if queued >= self.max_queue:
                self.hooks.request_rejected("queue_full")
                raise QueueFullError(self.retry_after())
            handle = RequestHandle(self, next(self._ids), loop)
            seq = _Sequence(request, handle, time.monotonic(), TextStream(request.stop))
            self._shared.waiting.append(seq)
            self.hooks.request_queued()
            self._cond.notify()
        return handle

    def _cancel(self, seq_id: int) -> None:
        with self._cond:
            self._shared.cancelled.add(seq_id)
            self._cond.notify()

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    self._shared.running
                    and not self._shared.waiting
                    and not self._active
                    and not (self._shared.cancelled)
                ):
                    self._cond.wait()
                if not self._shared.running:
                    break
                cancelled, self._shared.cancelled = self._shared.cancelled, set()
                self._drop_cancelled_waiting(cancelled)
                admitted = self._take_admissions()
            try:
                self._release_cancelled(cancelled)
                for seq in admitted:
                    self._begin(seq)
                step_error = self._step() if self._active else False
                if self.request_timeout > 0:
                    self._expire_overdue(time.monotonic())
            except Exception:
                # The engine thread must never die silently: every request in flight would hang.
                step_error = True
                self._fail_active("the engine loop failed")
            try:
                # Every pass, not only after a decode: a cancel or a failed start changes the gauges too.
                self.hooks.step_done(
                    len(self._active), len(self._shared.waiting), self.engine.n_cached_cells(), step_error
                )
            except Exception:
                log.exception("the step_done hook failed")
        self._shutdown()

    def _reset_engine(self) -> None:
        # Every request of the failed step has been failed and released, so only idle slots' cached
        # prefixes are lost; in exchange a context left unusable by the failure serves again.
        try:
            self.engine.reset()
        except Exception:
            log.exception("could not recreate the engine's context after a failed step")
        else:
            log.warning("recreated the engine's context after a failed step")

    def _fail_active(self, what: str) -> None:
        log.exception("%s; failing requests %s", what, [s.request.request_id for s in self._active.values()])
        for seq in list(self._active.values()):
            seq.handle._push(ErrorEvent(EngineError(what)))
            try:
                self._finish(seq, FinishReason.ERROR, keep_cache=False, notify=False)
            except Exception:
                log.exception("could not release slot %d", seq.slot)
                self._active.pop(seq.slot, None)  # never leak the slot, whatever the engine says
        self._busy = len(self._active)

    def _expire_overdue(self, now: float) -> None:
        """End requests older than ``request_timeout``, running or still queued."""
        limit = self.request_timeout
        for seq in list(self._active.values()):
            if now - seq.submitted_at > limit:
                log.warning(
                    "request %s passed the %g s request timeout after %d tokens",
                    seq.request.request_id,
                    limit,
                    seq.generated,
                )
                seq.handle._push(ErrorEvent(RequestTimeoutError(limit)))
                self._finish(seq, FinishReason.ERROR, notify=False)
        with self._cond:
            overdue = [s for s in self._shared.waiting if now - s.submitted_at > limit]
            if overdue:
                self._shared.waiting = deque(s for s in self._shared.waiting if now - s.submitted_at <= limit)
        for seq in overdue:
            log.warning("request %s passed the %g s request timeout while queued", seq.request.request_id, limit)
            seq.handle._push(ErrorEvent(RequestTimeoutError(limit)))
            self.hooks.request_finished(FinishReason.ERROR, len(seq.request.prompt_tokens), 0, now - seq.submitted_at)

    def _drop_cancelled_waiting(self, cancelled: set[int]) -> None:
        # A client that left while queued never takes a slot.
        kept = deque(s for s in self._shared.waiting if s.handle.seq_id not in cancelled)
        for seq in self._shared.waiting:
            if seq.handle.seq_id in cancelled:
                self.hooks.request_finished(FinishReason.CANCELLED, len(seq.request.prompt_tokens), 0, 0.0)
        self._shared.waiting = kept

    def _take_admissions(self) -> list[_Sequence]:
        free = [s for s in range(self.n_slots) if s not in self._active]
        taken: list[_Sequence] = []
        while free and self._shared.waiting:
            seq = self._shared.waiting.popleft()
            seq.slot = self._choose_slot(free, seq.request.prompt_tokens)
            free.remove(seq.slot)
            self._active[seq.slot] = seq
            taken.append(seq)
        self._busy = len(self._active)
        return taken

    def _choose_slot(self, free: list[int], prompt: Sequence[int]) -> int:
        # Longest cached prefix wins. Among equals, the slot whose loss costs least: one that loses
        # nothing (empty, or kept by the engine's prompt cache), then the least recently used, so
        # that caches other conversations may come back to survive longest.
        def cost(s: int) -> tuple[int, bool, float]:
            lossless = self.engine.slot_loss(s, prompt) == 0
            return self.engine.cached_prefix_len(s, prompt), lossless, -self._slot_last_used[s]

        return max(free, key=cost)

    def _release_cancelled(self, cancelled: set[int]) -> None:
        for seq in list(self._active.values()):
            if seq.handle.seq_id in cancelled:
                self._finish(seq, FinishReason.CANCELLED, keep_cache=False)

    def _begin(self, seq: _Sequence) -> None:
        now = time.monotonic()
        seq.started_at = now
        try:
            seq.cached = self.engine.begin(seq.slot, seq.request.prompt_tokens, seq.request.params)
        except Exception as exc:  # a bad grammar, say: fail this request only, with the engine's own error
            log.warning("request %s could not start: %s", seq.request.request_id, exc)
            del self._active[seq.slot]
            self._busy = len(self._active)
            seq.handle._push(ErrorEvent(exc if isinstance(exc, EngineError) else EngineError(str(exc))))
            return
        seq.handle._mark_admitted()
        self.hooks.request_started(now - seq.submitted_at, len(seq.request.prompt_tokens), seq.cached)

    def _step(self) -> bool:
        """One decode over every active slot; True when it failed."""
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception(
                "engine step failed; failing requests %s",
                [s.request.request_id for s in self._active.values()],
            )
            for seq in list(self._active.values()):
                error = exc if isinstance(exc, EngineError) else EngineError(str(exc))
                seq.handle._push(ErrorEvent(error))
                self._finish(seq, FinishReason.ERROR, keep_cache=False, notify=False)
            self._reset_engine()
            return True
        now = time.monotonic()
        for out in outputs:
            target = self._active.get(out.slot)
            if target is not None:
                self._on_token(target, out, now)
        return False

    def _on_token(self, seq: _Sequence, out: StepOutput, now: float) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.hooks.first_token(now - seq.submitted_at, now - seq.started_at)
        else:
            self.hooks.token(now - seq.last_token_at)
        seq.last_token_at = now
        if out.token in self._eog:
            self._finish(seq, FinishReason.STOP)
            return
        seq.generated += 1
        piece = self.engine.token_bytes(out.token)
        text = seq.stream.push(piece)
        seq.handle._push(TokenEvent(out.token, text, piece, out.logprob, out.top_logprobs))
        if seq.stream.stopped:
            self._finish(seq, FinishReason.STOP)
        elif seq.generated >= seq.request.max_tokens or self.engine.slot_is_full(seq.slot):
            self._finish(seq, FinishReason.LENGTH)

    def _finish(self, seq: _Sequence, reason: FinishReason, *, keep_cache: bool = True, notify: bool = True) -> None:
        self.engine.release(seq.slot, keep_cache=keep_cache)
        self._active.pop(seq.slot, None)
        self._busy = len(self._active)
        now = time.monotonic()
        self._slot_last_used[seq.slot] = now
        e2e = now - seq.submitted_at
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            self._avg_request_seconds = 0.8 * self._avg_request_seconds + 0.2 * (now - seq.started_at)
        self.hooks.request_finished(reason, len(seq.request.prompt_tokens), seq.generated, e2e)
        if notify and reason is not FinishReason.CANCELLED:
            tail = seq.stream.finish()
            seq.handle._push(FinishEvent(reason, tail, len(seq.request.prompt_tokens), seq.generated, seq.cached))

    def _shutdown(self) -> None:
        for seq in list(self._active.values()):
            seq.handle._push(ErrorEvent(ServiceUnavailableError("The server is shutting down.")))
            self._finish(seq, FinishReason.CANCELLED, keep_cache=False, notify=False)
        with self._cond:
            for seq in self._shared.waiting:
                seq.handle._push(ErrorEvent(ServiceUnavailableError("The server is shutting down.")))
            self._shared.waiting.clear()
