"""The SQLite underneath every store in :mod:`server.state`: where the file lives, opening and
checking it, and connections that several threads may use at once.

A store's methods block, and the service calls them from worker threads (``asyncio.to_thread``),
several at a time. Each call borrows a connection from a small :class:`ConnectionPool`, so no two
threads share one at once; the file is in WAL mode, so readers never wait for the writer, and
writers wait for each other (``busy_timeout``) instead of failing. ``:memory:`` is one connection
that the calls take in turn: a second connection to ``:memory:`` would be a second, empty database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from server.errors import LlamaserveError

MEMORY = ":memory:"
# Long enough for dozens of writers queueing behind each other; a writer holds the lock for
# one response's insert and the bound's deletes, milliseconds.
BUSY_TIMEOUT_SECONDS = 30.0
# Connections one file-backed store keeps open at most; more threads than this wait their turn.
POOL_SIZE = 8

# SQLite's primary result codes (``sqlite_errorname`` without the extended suffix) that mean the
# file itself is bad rather than the call.
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_UNWRITABLE = frozenset({"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_FULL", "SQLITE_IOERR"})


class StateStoreError(LlamaserveError):
    """The state database cannot be used: corrupt, not a database, unwritable, or from a newer
    release. At start-up the CLI prints the message (one paragraph) and exits 2; while serving,
    a failed write is a 500 with the same message."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/llamaserve``, else ``~/.local/share/llamaserve`` (the XDG base directory spec:
    a relative ``XDG_DATA_HOME`` is ignored)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "llamaserve"


def resolve_location(state_dir: str | None) -> str:
    """``--state-dir`` as a store opens it: ``:memory:``, or a directory (the per-user one by default)."""
    if state_dir is None or state_dir == "":
        return str(default_state_dir())
    if state_dir == MEMORY:
        return MEMORY
    return str(Path(state_dir).expanduser())


def error_name(exc: sqlite3.Error) -> str:
    """``SQLITE_IOERR`` for ``SQLITE_IOERR_WRITE``: the family an error belongs to."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    parts = name.split("_")
    return "_".join(parts[:2]) if len(parts) > 2 else name


def describe_failure(exc: sqlite3.Error, path: Path) -> str:
    """One paragraph that says what is wrong with the database at ``path`` and what to do."""
    family = error_name(exc)
    if family in _CORRUPT:
        return corrupt_message(path, str(exc))
    if family in _UNWRITABLE:
        return unwritable_message(path.parent, str(exc))
    return (
        f"The state database {path} cannot be used ({exc}). Check the file and its directory, or choose "
        f"another with --state-dir DIR (--state-dir :memory: keeps stored responses in memory only)."
    )


def corrupt_message(path: Path, detail: str) -> str:
    return (
        f"The state database {path} is corrupt or not a SQLite database ({detail}). Move it aside to "
        f"start with no stored responses (llamaserve then creates a new one), restore it from a backup, "
        f"or choose another directory with --state-dir DIR (--state-dir :memory: keeps stored responses "
        f"in memory only)."
    )


def unwritable_message(directory: Path, detail: str) -> str:
    return (
        f"The state directory {directory} cannot be written ({detail}). Give llamaserve a directory it "
        f"may write with --state-dir DIR, or --state-dir :memory: to keep stored responses in memory "
        f"only (lost when the server stops)."
    )


def connect_file(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself, so
    # two writers never both hold a read snapshot and then fail to upgrade it.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    # NORMAL in WAL mode: a crash of the process loses nothing committed; a power loss may lose
    # the last transactions, never the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def connect_memory() -> sqlite3.Connection:
    return sqlite3.connect(MEMORY, isolation_level=None, check_same_thread=False)


class ConnectionPool:
    """At most ``size`` connections, each lent to one thread at a time and reused after."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, *, on_closed: Callable[[], str]) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        self._on_closed = on_closed

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._slots:
            conn = self._take()
            try:
                yield conn
            finally:
                self._give_back(conn)

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StateStoreError(self._on_closed())
            if self._idle:
                return self._idle.pop()
        conn = self._connect()
        with self._lock:
            self._all.append(conn)
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # an exception between BEGIN and COMMIT
            conn.rollback()
        with self._lock:
            if self._closed:
                self._all.remove(conn)
                conn.close()
            else:
                self._idle.append(conn)

    def close(self) -> None:
        """Close every idle connection now, and each lent one when it comes back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            for conn in idle:
                self._all.remove(conn)
        for conn in idle:
            conn.close()
