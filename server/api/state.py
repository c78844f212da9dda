"""What one running app holds: built by ``create_app``, owned by its lifespan."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from server.ops.metrics import Metrics
from server.services.registry import ModelRegistry
from server.settings import Settings
from server.state import ResponseStore


class AppStatus(enum.StrEnum):
    """What ``/health`` reports: loading -> ok -> draining, or error when the models failed to load."""

    LOADING = "loading"
    OK = "ok"
    DRAINING = "draining"
    ERROR = "error"


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry  # one model or several: routes, health and drain all ask it
    status: AppStatus = AppStatus.LOADING
    load_error: str | None = None
    metrics: Metrics = field(default_factory=Metrics)  # per app, so tests can build many
    responses: ResponseStore | None = None  # stored responses (Responses API): open while the app runs
