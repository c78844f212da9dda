"""Stored state for the APIs that keep it, in SQLite (the standard library's ``sqlite3``).

:mod:`server.state.responses` keeps OpenAI Responses API responses and their input items;
:mod:`server.state.sqlite` opens, checks and shares the database file. This package imports only
the shared vocabulary (errors, settings): the services and the API layer use it, never the
reverse.
"""

from server.state.responses import (
    DB_FILE,
    SCHEMA_VERSION,
    ItemPage,
    ResponseStore,
    StoredResponse,
    UnknownItemError,
    open_response_store,
)
from server.state.sqlite import MEMORY, StateStoreError, default_state_dir, resolve_location

__all__ = [
    "DB_FILE",
    "MEMORY",
    "SCHEMA_VERSION",
    "ItemPage",
    "ResponseStore",
    "StateStoreError",
    "StoredResponse",
    "UnknownItemError",
    "default_state_dir",
    "open_response_store",
    "resolve_location",
]
