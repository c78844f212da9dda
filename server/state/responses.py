"""Stored responses for OpenAI's Responses API: one SQLite file, bounded by age and by size.

A stored response is its Response object exactly as the client got it, the input items that
``GET /v1/responses/{id}/input_items`` lists, and the conversation a follow-up with
``previous_response_id`` continues from. Each belongs to the API key that created it (``owner``,
the key's short id; None when the server has no keys): every read and delete names an owner, and
a record of another owner reads as absent, so another key learns nothing, not even that it exists.

Bounds are enforced in the same transaction as each write, and once at open: rows older than
``max_age_days`` go first (they are never served once expired, even before they are deleted),
then the oldest until the total size is within ``max_bytes``. The size of a row is the byte
length of the JSON stored for it (response, conversation, input items), which is what the file
grows with; SQLite's own pages add a little on top. The response just written is never the one
evicted, even when it alone is larger than the bound: a client told ``store: true`` can read it
back at least until the next one arrives.

The schema's version is ``PRAGMA user_version``: a later release migrates from it, and this one
refuses a file written by a newer one instead of guessing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from server.errors import InvalidRequestError
from server.settings import Settings
from server.state.sqlite import (
    MEMORY,
    POOL_SIZE,
    ConnectionPool,
    StateStoreError,
    connect_file,
    connect_memory,
    corrupt_message,
    describe_failure,
    resolve_location,
    unwritable_message,
)

DB_FILE = "responses.sqlite3"
SCHEMA_VERSION = 1
SECONDS_PER_DAY = 86400.0

_SCHEMA = (
    """CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT,
        created_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        previous_response_id TEXT,
        response TEXT NOT NULL,
        conversation TEXT NOT NULL,
        stored_at REAL NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    # Expiry, eviction order (stored_at, then rowid: the index carries it) and the size total.
    "CREATE INDEX responses_by_age ON responses (stored_at, bytes)",
    """CREATE TABLE input_items (
        response_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (response_id, position)
    ) WITHOUT ROWID""",
    "CREATE INDEX input_items_by_id ON input_items (response_id, item_id)",
)


@dataclass(frozen=True)
class StoredResponse:
    id: str  # "resp_..."
    owner: str | None  # the creating API key's short id; None when the server has no keys
    created_at: int  # unix seconds, as in the Response object
    model: str
    previous_response_id: str | None
    response: dict[str, Any]  # the Response object exactly as returned to the client
    input_items: list[dict[str, Any]]  # listed by GET .../input_items, oldest first, each with its "id"
    conversation: list[dict[str, Any]]  # the whole context a follow-up with previous_response_id continues


@dataclass(frozen=True)
class ItemPage:
    items: list[dict[str, Any]]
    has_more: bool


class UnknownItemError(InvalidRequestError):
    """``after`` names no input item of the response (400)."""

    def __init__(self, item_id: str, response_id: str) -> None:
        super().__init__(f"No input item with id '{item_id}' in response '{response_id}'.", param="after")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


class ResponseStore:
    """Stored responses in SQLite (a file in WAL mode, or ``:memory:``); safe across threads.

    Every method blocks: call it off the event loop. Build one with :meth:`open`.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        path: Path | None,
        *,
        max_age_days: float | None,
        max_bytes: int | None,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self.path = path  # the database file; None for :memory:
        self._max_age = max_age_days * SECONDS_PER_DAY if max_age_days else None
        self._max_bytes = max_bytes or None
        self._clock = clock

    @classmethod
    def open(
        cls,
        location: str,
        *,
        max_age_days: float | None,
        max_bytes: int | None,
        clock: Callable[[], float] = time.time,
    ) -> ResponseStore:
        """Open (creating it if need be) the store in the directory ``location``, or in memory.

        ``max_age_days`` and ``max_bytes``: None or 0 = no bound. Raises :class:`StateStoreError`
        with a one-paragraph message when the database is corrupt, not a database, from a newer
        release, or cannot be written.
        """
        path: Path | None
        if location == MEMORY:
            path, pool = None, ConnectionPool(connect_memory, 1, on_closed=_closed_message)
        else:
            directory = Path(location)
            if directory.exists() and not directory.is_dir():
                raise StateStoreError(unwritable_message(directory, "it is a file, not a directory"))
            db = path = directory / DB_FILE
            try:
                # Owner only: stored responses hold what users wrote. SQLite gives its -wal and -shm
                # files the database's own mode.
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StateStoreError(unwritable_message(directory, exc.strerror or str(exc))) from None
            pool = ConnectionPool(lambda: connect_file(db), POOL_SIZE, on_closed=_closed_message)
        store = cls(pool, path, max_age_days=max_age_days, max_bytes=max_bytes, clock=clock)
        try:
            store._prepare()
        except sqlite3.Error as exc:
            pool.close()
            raise StateStoreError(describe_failure(exc, path or Path(MEMORY))) from None
        except BaseException:
            pool.close()
            raise
        return store

    def _prepare(self) -> None:
        """Check the file, create or migrate the schema, and apply the bounds, before any request."""
        with self._pool.connection() as conn:
            if self.path is not None:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: recorded in the file
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise StateStoreError(corrupt_message(self.path or Path(MEMORY), "; ".join(problems[:3])))
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateStoreError(
                    f"The state database {self.path} was written by a newer llamaserve (schema {version}; "
                    f"this one knows {SCHEMA_VERSION}). Upgrade llamaserve, or choose another directory "
                    f"with --state-dir DIR."
                )
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            # Written on every open, so a file that cannot be written fails here, at start-up.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._enforce_bounds(conn, keep=None)
            conn.execute("COMMIT")

    # ---- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        try:
            with self._pool.connection() as conn:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A full disk or a file broken while serving: a 500 that says what, not a bare traceback.
            raise StateStoreError(f"The response store failed: {exc}.") from exc

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # IMMEDIATE: take the write lock first, so writers queue (busy_timeout) instead of failing.
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # One snapshot for the several SELECTs of one call.
        return self._transaction("BEGIN")

    def _cutoff(self) -> float:
        """``stored_at`` before which a row has expired."""
        return self._clock() - self._max_age if self._max_age is not None else float("-inf")

    # ---- the interface ----------------------------------------------------------------------

    def put(self, record: StoredResponse) -> None:
        """Insert ``record``, or replace the one with its id; then enforce the bounds."""
        items = []
        for position, item in enumerate(record.input_items):
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(f"input item {position} of {record.id} has no string 'id'")
            items.append((record.id, position, item_id, _dumps(item)))
        response, conversation = _dumps(record.response), _dumps(record.conversation)
        size = _size(response) + _size(conversation) + sum(_size(i[3]) for i in items)
        with self._write() as conn:
            self._delete_rows(conn, [record.id])
            conn.execute(
                "INSERT INTO responses (id, owner, created_at, model, previous_response_id, response, "
                "conversation, stored_at, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.created_at,
                    record.model,
                    record.previous_response_id,
                    response,
                    conversation,
                    self._clock(),
                    size,
                ),
            )
            conn.executemany("INSERT INTO input_items VALUES (?, ?, ?, ?)", items)
            self._enforce_bounds(conn, keep=record.id)

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        """The response, or None: absent, expired, or another owner's."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT owner, created_at, model, previous_response_id, response, conversation FROM responses "
                "WHERE id = ? AND owner IS ? AND stored_at >= ?",
                (response_id, owner, self._cutoff()),
            ).fetchone()
            if row is None:
                return None
            items = conn.execute(
                "SELECT item FROM input_items WHERE response_id = ? ORDER BY position", (response_id,)
            ).fetchall()
        return StoredResponse(
            id=response_id,
            owner=row[0],
            created_at=row[1],
            model=row[2],
            previous_response_id=row[3],
            response=json.loads(row[4]),
            input_items=[json.loads(i[0]) for i in items],
            conversation=json.loads(row[5]),
        )

    def delete(self, response_id: str, owner: str | None) -> bool:
        """Delete the response and its items; False when absent, expired or another owner's."""
        with self._write() as conn:
            if not self._visible(conn, response_id, owner):
                return False
            self._delete_rows(conn, [response_id])
            return True

    def input_items(
        self,
        response_id: str,
        owner: str | None,
        *,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> ItemPage | None:
        """One page of the response's input items in ``order`` (``asc`` = oldest first), starting
        after the item ``after``; None when there is no such response for ``owner``.

        Raises :class:`UnknownItemError` when ``after`` names no item of the response. Item ids are
        unique as the service assigns them; were one repeated, the page starts after its last
        occurrence in the reading order, so that paging to the end always ends.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        ascending = order == "asc"
        with self._read() as conn:
            if not self._visible(conn, response_id, owner):
                return None
            if after is None:
                start = -1 if ascending else 2**62
            else:
                found = conn.execute(
                    f"SELECT {'MAX' if ascending else 'MIN'}(position) FROM input_items "
                    "WHERE response_id = ? AND item_id = ?",
                    (response_id, after),
                ).fetchone()[0]
                if found is None:
                    raise UnknownItemError(after, response_id)
                start = found
            where, direction = ("position > ?", "ASC") if ascending else ("position < ?", "DESC")
            rows = conn.execute(
                f"SELECT item FROM input_items WHERE response_id = ? AND {where} ORDER BY position {direction} LIMIT ?",
                (response_id, start, limit + 1),
            ).fetchall()
        return ItemPage(items=[json.loads(r[0]) for r in rows[:limit]], has_more=len(rows) > limit)

    def count(self) -> int:
        """Responses stored and not expired."""
        with self._read() as conn:
            n: int = conn.execute("SELECT COUNT(*) FROM responses WHERE stored_at >= ?", (self._cutoff(),)).fetchone()[
                0
            ]
        return n

    def bytes_used(self) -> int:
        """Bytes of JSON held by the responses stored and not expired (what ``max_bytes`` bounds)."""
        with self._read() as conn:
            total: int = conn.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM responses WHERE stored_at >= ?", (self._cutoff(),)
            ).fetchone()[0]
        return total

    def close(self) -> None:
        """Close the connections (a file's WAL is folded into it); later calls raise StateStoreError."""
        self._pool.close()

    # ---- helpers, inside a transaction --------------------------------------------------------

    def _visible(self, conn: sqlite3.Connection, response_id: str, owner: str | None) -> bool:
        row = conn.execute(
            "SELECT 1 FROM responses WHERE id = ? AND owner IS ? AND stored_at >= ?",
            (response_id, owner, self._cutoff()),
        ).fetchone()
        return row is not None

    @staticmethod
    def _delete_rows(conn: sqlite3.Connection, ids: list[str]) -> None:
        rows = [(i,) for i in ids]
        conn.executemany("DELETE FROM input_items WHERE response_id = ?", rows)
        conn.executemany("DELETE FROM responses WHERE id = ?", rows)

    def _enforce_bounds(self, conn: sqlite3.Connection, *, keep: str | None) -> None:
        """Drop the expired rows, then the oldest (never ``keep``) until the total is within max_bytes."""
        if self._max_age is not None:
            cutoff = (self._cutoff(),)
            conn.execute(
                "DELETE FROM input_items WHERE response_id IN (SELECT id FROM responses WHERE stored_at < ?)", cutoff
            )
            conn.execute("DELETE FROM responses WHERE stored_at < ?", cutoff)
        if self._max_bytes is None:
            return
        excess = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM responses").fetchone()[0] - self._max_bytes
        if excess <= 0:
            return
        doomed = []
        for response_id, size in conn.execute("SELECT id, bytes FROM responses ORDER BY stored_at, rowid"):
            if excess <= 0:
                break
            if response_id != keep:
                doomed.append(response_id)
                excess -= size
        self._delete_rows(conn, doomed)


def open_response_store(settings: Settings) -> ResponseStore:
    """The store ``--state-dir`` names, with ``--responses-max-age`` and ``--responses-max-bytes``."""
    return ResponseStore.open(
        resolve_location(settings.state_dir),
        max_age_days=settings.responses_max_age,
        max_bytes=settings.responses_max_bytes,
    )


def _closed_message() -> str:
    return "The response store is closed (the server is shutting down)."
