"""Admission, a bounded wait queue, slot choice, cancellation and the step loop.

One engine thread owns the engine. The asyncio side talks to it only through
:meth:`Scheduler.submit` and :meth:`RequestHandle.cancel`; events come back once per
engine pass, all slots' together, through :class:`~server.runtime.handle.Outbox`. A
cancelled request is released at the start of the next engine step, so a
client that disconnects frees its slot and KV cells within one step.

Waiting requests are ordered by :class:`~server.runtime.waitqueue.WaitQueue`: priority,
then weighted round robin across API keys, then arrival. ``max_queue`` bounds the whole
queue and ``max_queue_per_key`` one key's part of it (429 beyond either).

With ``preempt_after`` > 0, a request of strictly better priority that has waited that long
while every slot is busy gets one: the worst running sequence is paused
(:mod:`server.runtime.preemption` says which), its state held by the engine
(:meth:`Engine.pause <server.engine.base.Engine.pause>`), and it goes back to the front of its
priority in the queue. Its stream just stalls; when it takes a slot again it goes on where it
stopped: the engine kept its cells, sampler and pending token, and its :class:`_Sequence` (text
stream with its stop-string state, tokens generated, budget left) never left the scheduler.
At most ``n_slots`` sequences are paused at once, so paused states never hold more host memory
than the KV cache itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.engine.base import Engine, EngineError, FinishReason, PausedSequence, StepOutput
from server.errors import KeyQueueFullError, QueueFullError, RequestTimeoutError, ServiceUnavailableError
from server.runtime.events import (
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    NoHooks,
    PrefillEvent,
    QueuedEvent,
    SchedulerHooks,
    TokenEvent,
)
from server.runtime.handle import Outbox, RequestHandle
from server.runtime.preemption import choose_victims
from server.runtime.textstream import TextStream
from server.runtime.waitqueue import WaitQueue

__all__ = ["RequestHandle", "Scheduler"]

log = logging.getLogger(__name__)


@dataclass
class _Sequence:
    request: GenerationRequest
    handle: RequestHandle
    submitted_at: float
    stream: TextStream
    queued_at: float = 0.0  # when it last joined the wait queue (submitted, or paused)
    paused: PausedSequence | None = None  # held by the engine while the sequence waits to resume
    slot: int = -1
    cached: int = 0
    generated: int = 0
    started_at: float = 0.0
    last_token_at: float = 0.0
    first_token_at: float | None = None
    reported: int = 0  # progress requests: the queue position or prefilled count last sent

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def key_id(self) -> str:
        return self.request.key_id

    @property
    def n_cells(self) -> int:
        return len(self.request.prompt_tokens) + self.generated


@dataclass
class _Shared:
    """State both threads touch; guarded by ``Scheduler._cond``."""

    waiting: WaitQueue[_Sequence] = field(default_factory=WaitQueue)
    cancelled: set[int] = field(default_factory=set)
    running: bool = True
    accepting: bool = True
    # Queue positions are worked out only while a request that asked for them waits, and only
    # when the queue changed (a submit, an admission, a cancel): never on the normal path.
    report_positions: bool = False
    queue_changed: bool = False


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 64,
        hooks: SchedulerHooks | None = None,
        request_timeout: float = 0.0,
        max_queue_per_key: int = 0,
        key_weights: Mapping[str, float] | None = None,
        preempt_after: float = 0.0,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.max_queue_per_key = max_queue_per_key  # 0 = only max_queue bounds a key
        self.request_timeout = request_timeout  # seconds from submit to the last token; 0 = none
        self.preempt_after = preempt_after  # seconds a better request waits before a pause; 0 = never
        self.hooks: SchedulerHooks = hooks or NoHooks()
        self.n_slots = engine.info.n_slots
        self._eog = engine.info.eog_tokens
        self._cond = threading.Condition()
        self._shared = _Shared(WaitQueue(key_weights))
        self._outbox = Outbox()  # engine thread only
        self._ids = itertools.count(1)
        self._active: dict[int, _Sequence] = {}  # slot -> sequence; engine thread only
        self._prefilling: dict[int, _Sequence] = {}  # slot -> a progress request still prefilling; engine thread
        self._slot_last_used = [0.0] * self.n_slots
        self._avg_request_seconds = 2.0
        self._busy = 0  # slots busy, read by the asyncio side for admission decisions
        self._n_paused = 0  # sequences paused, in the wait queue; engine thread only
        self._thread: threading.Thread | None = None
        # Liveness (/health/live): when the engine thread last finished a pass of its loop, or woke from
        # idle. Written by the engine thread only; a float store is atomic, so readers need no lock.
        self.last_step_finished = time.monotonic()

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

    def waiting_by_key(self) -> dict[str, int]:
        """Waiting sequences per API key id (keys with none are left out)."""
        with self._cond:
            return self._shared.waiting.counts()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def has_work(self) -> bool:
        """Requests running or queued: the engine thread owes a step (liveness compares it with the clock)."""
        return self._busy > 0 or len(self._shared.waiting) > 0

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
            free = self.n_slots - self._busy
            queued = len(self._shared.waiting) - free
            if queued >= self.max_queue:
                self.hooks.request_rejected("queue_full")
                raise QueueFullError(self.retry_after())
            # The same for one key: those of its waiting requests that free slots take are not queued.
            key_queued = self._shared.waiting.count(request.key_id) - max(0, free)
            if self.max_queue_per_key and queued >= 0 and key_queued >= self.max_queue_per_key:
                self.hooks.request_rejected("key_queue_full")
                raise KeyQueueFullError(self.retry_after())
            handle = RequestHandle(next(self._ids), loop, self._cancel)
            now = time.monotonic()
            seq = _Sequence(request, handle, now, TextStream(request.stop), queued_at=now)
            if not self.has_work:
                # Idle is not stuck: the engine owes a step from now, not since its last one (the
                # engine thread may take a while to wake on a loaded machine).
                self.last_step_finished = now
            self._shared.waiting.push(seq)
            self._shared.queue_changed = True
            if request.progress:
                self._shared.report_positions = True
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
                    self.last_step_finished = time.monotonic()  # idle is not stuck: count from the wake
                if not self._shared.running:
                    break
                cancelled, self._shared.cancelled = self._shared.cancelled, set()
                self._drop_cancelled_waiting(cancelled)
                victims = self._victims(cancelled)
                admitted = self._take_admissions()
                if self._shared.report_positions and (admitted or cancelled or self._shared.queue_changed):
                    self._report_positions()
                self._shared.queue_changed = False
            try:
                self._release_cancelled(cancelled)
                if victims:
                    admitted += self._preempt(victims)
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
                self._outbox.flush()
                self.hooks.step_done(
                    len(self._active), len(self._shared.waiting), self.engine.n_cached_cells(), step_error
                )
            except Exception:
                log.exception("the step_done hook failed")
            self.last_step_finished = time.monotonic()
        self._shutdown()
        self._outbox.flush()

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
            self._outbox.push(seq.handle, ErrorEvent(EngineError(what)))
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
                self._outbox.push(seq.handle, ErrorEvent(RequestTimeoutError(limit)))
                self._finish(seq, FinishReason.ERROR, notify=False)
        with self._cond:
            overdue = self._shared.waiting.remove_if(lambda s: now - s.submitted_at > limit)
            self._shared.queue_changed |= bool(overdue)
        for seq in overdue:
            log.warning("request %s passed the %g s request timeout while queued", seq.request.request_id, limit)
            self._drop_paused(seq)
            self._outbox.push(seq.handle, ErrorEvent(RequestTimeoutError(limit)))
            self.hooks.request_finished(
                FinishReason.ERROR, len(seq.request.prompt_tokens), seq.generated, now - seq.submitted_at
            )

    def _drop_cancelled_waiting(self, cancelled: set[int]) -> None:
        # A client that left while queued never takes a slot; one that left while paused frees its state.
        if not cancelled:
            return
        for seq in self._shared.waiting.remove_if(lambda s: s.handle.seq_id in cancelled):
            self._drop_paused(seq)
            self.hooks.request_finished(FinishReason.CANCELLED, len(seq.request.prompt_tokens), seq.generated, 0.0)

    def _drop_paused(self, seq: _Sequence) -> None:
        if seq.paused is not None:
            self.engine.drop_paused(seq.paused)
            seq.paused = None
            self._n_paused -= 1

    # ---- preemption ---------------------------------------------------------------------------

    def _victims(self, cancelled: set[int]) -> list[_Sequence]:
        """Running sequences to pause for better waiting ones (see the module docstring); under the lock."""
        if self.preempt_after <= 0 or len(self._active) < self.n_slots or not self._shared.waiting:
            return []
        running = [s for s in self._active.values() if s.handle.seq_id not in cancelled]
        if len(running) < self.n_slots:
            return []  # a slot frees this pass: no need to take one
        return choose_victims(
            running,
            self._shared.waiting,
            now=time.monotonic(),
            after=self.preempt_after,
            limit=self.n_slots - self._n_paused,
        )

    def _preempt(self, victims: list[_Sequence]) -> list[_Sequence]:
        """Pause ``victims``, put them back in the queue, and admit into the slots they free."""
        paused = []
        for seq in victims:
            try:
                seq.paused = self.engine.pause(seq.slot)
            except EngineError as exc:  # n choices sharing a prompt still prefilling, say: it runs on
                log.debug("request %s was not paused: %s", seq.request.request_id, exc)
                continue
            del self._active[seq.slot]
            self._slot_last_used[seq.slot] = time.monotonic()
            self._n_paused += 1
            seq.queued_at = time.monotonic()
            paused.append(seq)
            self.hooks.request_preempted()
            log.info(
                "paused request %s (priority %d, %d tokens generated) for a better-priority request",
                seq.request.request_id,
                seq.priority,
                seq.generated,
            )
        if not paused:
            return []
        with self._cond:
            for seq in paused:
                self._shared.waiting.push_front(seq)
            return self._take_admissions()

    def _report_positions(self) -> None:
        """Tell each waiting progress request its place in the queue, when it changed (lock held)."""
        wanted = False
        for position, seq in enumerate(self._shared.waiting.ranked(), start=1):
            if seq.request.progress:
                wanted = True
                if seq.reported != position:
                    seq.reported = position
                    self._outbox.push(seq.handle, QueuedEvent(position))
        self._shared.report_positions = wanted

    def _report_prefill(self, now: float) -> None:
        """A PrefillEvent for each progress request whose prompt advanced in this step."""
        for slot, seq in list(self._prefilling.items()):
            if self._active.get(slot) is not seq:  # it finished (cancelled, failed) meanwhile
                del self._prefilling[slot]
                continue
            done = self.engine.prefill_progress(slot)
            total = len(seq.request.prompt_tokens)
            if done != seq.reported:
                seq.reported = done
                event = PrefillEvent(total, min(seq.cached, done), done, now - seq.started_at)
                self._outbox.push(seq.handle, event)
            if done >= total:
                del self._prefilling[slot]

    def _take_admissions(self) -> list[_Sequence]:
        free = [s for s in range(self.n_slots) if s not in self._active]
        taken: list[_Sequence] = []
        while free and self._shared.waiting:
            seq = self._shared.waiting.pop()
            seq.slot = self._choose_slot(seq, free)
            free.remove(seq.slot)
            self._active[seq.slot] = seq
            taken.append(seq)
        self._busy = len(self._active)
        return taken

    def _choose_slot(self, seq: _Sequence, free: list[int]) -> int:
        if seq.paused is not None and seq.slot in free:
            return seq.slot  # its old slot may still hold its cells: nothing to copy back
        return self._best_slot(free, seq.request.prompt_tokens)

    def _best_slot(self, free: list[int], prompt: Sequence[int]) -> int:
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
        if seq.paused is not None:
            self._resume(seq)
            return
        now = time.monotonic()
        seq.started_at = now
        try:
            seq.cached = self.engine.begin(seq.slot, seq.request.prompt_tokens, seq.request.params)
        except Exception as exc:  # a bad grammar, say: fail this request only, with the engine's own error
            log.warning("request %s could not start: %s", seq.request.request_id, exc)
            del self._active[seq.slot]
            self._busy = len(self._active)
            self._outbox.push(seq.handle, ErrorEvent(exc if isinstance(exc, EngineError) else EngineError(str(exc))))
            return
        self._outbox.admitted(seq.handle)
        if seq.request.progress:
            self._prefilling[seq.slot] = seq
            seq.reported = -1
            self._report_prefill(now)  # where it starts: the reused prefix
        self.hooks.request_started(
            now - seq.submitted_at, len(seq.request.prompt_tokens), seq.cached, seq.request.priority
        )

    def _resume(self, seq: _Sequence) -> None:
        assert seq.paused is not None
        try:
            self.engine.resume(seq.slot, seq.paused)
        except Exception as exc:
            log.warning("request %s could not resume: %s", seq.request.request_id, exc)
            self._drop_paused(seq)
            del self._active[seq.slot]
            self._busy = len(self._active)
            self._outbox.push(seq.handle, ErrorEvent(exc if isinstance(exc, EngineError) else EngineError(str(exc))))
            self.hooks.request_finished(
                FinishReason.ERROR, len(seq.request.prompt_tokens), seq.generated, time.monotonic() - seq.submitted_at
            )
            return
        seq.paused = None
        self._n_paused -= 1

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
                self._outbox.push(seq.handle, ErrorEvent(error))
                self._finish(seq, FinishReason.ERROR, keep_cache=False, notify=False)
            self._reset_engine()
            return True
        now = time.monotonic()
        if self._prefilling:  # before the tokens: the last chunk's progress precedes the first token
            self._report_prefill(now)
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
        self._outbox.push(seq.handle, TokenEvent(out.token, text, piece, out.logprob, out.top_logprobs))
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
            self._outbox.push(
                seq.handle,
                FinishEvent(
                    reason, tail, len(seq.request.prompt_tokens), seq.generated, seq.cached, seq.stream.matched
                ),
            )

    def _shutdown(self) -> None:
        for seq in list(self._active.values()):
            self._outbox.push(seq.handle, ErrorEvent(ServiceUnavailableError("The server is shutting down.")))
            self._finish(seq, FinishReason.CANCELLED, keep_cache=False, notify=False)
        with self._cond:
            for seq in self._shared.waiting.clear():
                self._drop_paused(seq)
                self._outbox.push(seq.handle, ErrorEvent(ServiceUnavailableError("The server is shutting down.")))
