"""The models a server serves, by name: one or several, each with its own engine, slots, scheduler, services.

A single model is a registry of one, so routes, health, drain and shutdown have one code
path. A request's ``model`` field picks the model by its id or one of its aliases (``None`` picks
the first configured one). A name no model has is, as llama-server and llamafile treat it, answered
by the only model when there is one (apps send ``gpt-3.5-turbo`` whatever the server), by
``default_model`` when several are served, and otherwise (or with ``strict_model_name``) a 404.
A model that is not loaded is loaded on its first request, which waits for it (and is
counted as waiting in the queue gauge meanwhile). With ``max_loaded`` set, loading one
more unloads the least recently used model that has nothing running or queued; with
``idle_unload`` set, a model idle that long is unloaded. How a loaded engine becomes a
scheduler and services is the composition root's business (:mod:`server.api.app` passes
``serve``), so this module only decides *when* models load and unload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.engine.base import Engine
from server.errors import ModelNotFoundError, ServiceUnavailableError
from server.protocol import Model, ModelList, ModelPlacement
from server.services.model import LoadedModel
from server.settings import Settings

log = logging.getLogger(__name__)

# A model handed to a request this recently is never unloaded: the request may not have
# reached its scheduler yet, so "nothing running or queued" would be a lie.
LEASE_SECONDS = 2.0
# How often an over-full registry looks again for a model it may unload.
EVICT_POLL_SECONDS = 0.05


# How many distinct unknown model names are remembered (each is logged once); bounded, so a client
# sending a new name with every request cannot grow the set without end.
MAX_LOGGED_NAMES = 256


@dataclass
class _Entry:
    settings: Settings
    id: str
    aliases: list[str] = field(default_factory=list)  # names besides the id that route to it
    loaded: LoadedModel | None = None
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def idle(self) -> bool:
        s = self.loaded.scheduler if self.loaded else None
        return s is not None and s.busy == 0 and s.waiting == 0


class ModelRegistry:
    def __init__(
        self,
        models: Sequence[Settings],
        *,
        load: Callable[[Settings], Engine],
        serve: Callable[[Settings, Engine], LoadedModel],
        max_loaded: int = 0,
        idle_unload: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        strict_names: bool = False,
        fallback: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("a registry needs at least one model")
        self._entries: dict[str, _Entry] = {}
        self._names: dict[str, _Entry] = {}  # every id and alias -> its model
        for s in models:
            names = s.model_names() or [_model_id(s)]
            entry = _Entry(s.model_copy(update={"alias": names[0]}), names[0], names[1:])
            self._entries[entry.id] = entry
            self._names.update(dict.fromkeys(names, entry))
        self.default_id = next(iter(self._entries))
        if len(models) == 1:
            fallback = self.default_id  # the only model answers every name
        elif fallback is not None and fallback not in self._names:
            raise ValueError(f"default model {fallback!r} is not served")
        # The model an unknown name gets; None: a 404.
        self._fallback = None if strict_names else fallback
        self._fallback_names: set[str] = set()
        self._load = load
        self._serve = serve
        self.max_loaded = max_loaded
        self.idle_unload = idle_unload
        self._clock = clock
        self._waiting_for_load = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.created = int(time.time())

    # ---- what the routes use --------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    def loaded_ids(self) -> list[str]:
        return [e.id for e in self._entries.values() if e.loaded is not None]

    def list_models(self) -> ModelList:
        return ModelList(data=[self.model(i) for i in self._entries])

    def model(self, model_id: str) -> Model:
        """``GET /v1/models/{id}``: by id or alias, never by the fallback (it describes what is served)."""
        entry = self._names.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        placement = entry.loaded.engine.info.placement if entry.loaded is not None else {}
        where = ModelPlacement(split=len(placement) > 1, devices=list(placement)) if placement else None
        return Model(id=entry.id, created=self.created, placement=where, aliases=entry.aliases or None)

    def loaded(self, model_id: str | None = None) -> LoadedModel | None:
        """``model_id`` (None = the first) if it is loaded now; never loads anything."""
        entry = self._names.get(model_id or self.default_id)
        return entry.loaded if entry is not None else None

    def resolve(self, model: str | None) -> str:
        """The id of the model that answers the name ``model`` (see the module docstring)."""
        if not model:
            return self.default_id
        entry = self._names.get(model)
        if entry is not None:
            return entry.id
        if self._fallback is None:
            raise ModelNotFoundError(model)
        if model not in self._fallback_names and len(self._fallback_names) < MAX_LOGGED_NAMES:
            self._fallback_names.add(model)
            log.info("model %r is not served; %s answers it (--strict-model-name refuses it)", model, self._fallback)
        return self._names[self._fallback].id

    async def get(self, model: str | None) -> LoadedModel:
        """The model that answers ``model`` (None = the first), loading it first if needed."""
        if self._closed:
            raise ServiceUnavailableError("The server is shutting down.")
        entry = self._entries[self.resolve(model)]
        entry.last_used = self._clock()
        if entry.loaded is None:
            self._waiting_for_load += 1
            try:
                await self._ensure_loaded(entry)
            finally:
                self._waiting_for_load -= 1
        assert entry.loaded is not None
        entry.last_used = self._clock()
        return entry.loaded

    # ---- the queue gauges (metrics.watch reads these) -------------------------------------------

    @property
    def busy(self) -> int:
        return sum(e.loaded.scheduler.busy for e in self._entries.values() if e.loaded)

    @property
    def waiting(self) -> int:
        queued = sum(e.loaded.scheduler.waiting for e in self._entries.values() if e.loaded)
        return queued + self._waiting_for_load

    # ---- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models that fit (all, or the first ``max_loaded``), then watch for idle ones."""
        preload = list(self._entries.values())
        if self.max_loaded:
            preload = preload[: self.max_loaded]
        for entry in preload:
            await self._ensure_loaded(entry)
            entry.last_used = self._clock()
        if self.idle_unload > 0:
            self._reaper = asyncio.create_task(self._reap_idle())

    def stop_accepting(self) -> None:
        """Draining: nothing more loads, and every loaded model refuses new requests."""
        self._closed = True
        for e in self._entries.values():
            if e.loaded is not None:
                e.loaded.scheduler.stop_accepting()

    def stop(self) -> None:
        """Blocking: end what still runs on every model (their engines close in :meth:`close`).

        With :meth:`stop_accepting`, :attr:`busy` and :attr:`waiting` it lets the shutdown
        drain treat all models as it treats one scheduler.
        """
        for e in list(self._entries.values()):
            if e.loaded is not None:
                e.loaded.scheduler.stop()

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in self._entries.values():
            await self._unload(entry, reason="shutdown")

    async def _ensure_loaded(self, entry: _Entry) -> None:
        async with entry.lock:
            if entry.loaded is not None:
                return
            await self._make_room(entry)
            if self._closed:
                raise ServiceUnavailableError("The server is shutting down.")
            log.info("loading model %s", entry.id)
            started = self._clock()
            try:
                engine = await asyncio.to_thread(self._load, entry.settings)
            except Exception as exc:
                log.exception("model %s failed to load", entry.id)
                raise ServiceUnavailableError(f"The model '{entry.id}' could not be loaded: {exc}") from exc
            # Compiling the chat template and starting the engine thread stay off the event loop too.
            entry.loaded = await asyncio.to_thread(self._serve, entry.settings, engine)
            entry.last_used = self._clock()
            log.info("model %s loaded in %.1f s", entry.id, self._clock() - started)

    async def _make_room(self, entry: _Entry) -> None:
        """Unload least recently used models until one more fits under ``max_loaded``."""
        if not self.max_loaded:
            return
        while len(self.loaded_ids()) >= self.max_loaded and not self._closed:
            now = self._clock()
            candidates = [
                e
                for e in self._entries.values()
                if e is not entry and e.idle() and now - e.last_used >= LEASE_SECONDS and not e.lock.locked()
            ]
            if candidates:
                victim = min(candidates, key=lambda e: e.last_used)
                await self._unload(victim, reason=f"making room for {entry.id}")
                continue
            # Every loaded model is serving: wait for one to finish rather than exceed the limit.
            await asyncio.sleep(EVICT_POLL_SECONDS)

    async def _unload(self, entry: _Entry, *, reason: str) -> None:
        loaded, entry.loaded = entry.loaded, None
        if loaded is None:
            return
        log.info("unloading model %s (%s)", entry.id, reason)
        await asyncio.to_thread(loaded.close)

    async def _reap_idle(self) -> None:
        period = min(max(self.idle_unload / 4, 0.05), 5.0)
        while not self._closed:
            await asyncio.sleep(period)
            now = self._clock()
            for entry in self._entries.values():
                if (
                    entry.idle()
                    and now - entry.last_used >= max(self.idle_unload, LEASE_SECONDS)
                    and not entry.lock.locked()
                ):
                    async with entry.lock:
                        if entry.idle():
                            await self._unload(entry, reason=f"idle for {self.idle_unload:g} s")


def _model_id(settings: Settings) -> str:
    from server.engine.llama.model_files import default_model_id, resolve_model_path

    return default_model_id(resolve_model_path(settings.model))
