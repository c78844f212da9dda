"""What one running app holds: built by ``create_app``, owned by its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.base import Engine
from server.scheduler import Scheduler
from server.service import ChatService
from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    service: ChatService | None = None
    status: str = "loading"  # loading -> ok -> draining; or error
    load_error: str | None = None
