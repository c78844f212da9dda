"""What one running app holds: built by ``create_app``, owned by its lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.base import Engine
from server.ops.metrics import Metrics
from server.runtime.scheduler import Scheduler
from server.services.chat import ChatService
from server.services.registry import ModelRegistry
from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    service: ChatService | None = None
    status: str = "loading"  # loading -> ok -> draining; or error
    load_error: str | None = None
    metrics: Metrics = field(default_factory=Metrics)  # per app, so tests can build many
    registry: ModelRegistry | None = None  # several models by name (or unloadable): routes ask it
