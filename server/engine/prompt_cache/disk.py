"""The disk tier: saved states as files that survive a restart.

One directory per identity (model file, KV layout, llama.cpp version: :func:`keys.identity_digest`)
under the cache directory, one file per state, named by the digest of its tokens. A file is::

    header   magic, identity (32 bytes), n_tokens, n_data   (little-endian, ``HEADER``)
    tokens   n_tokens x int32
    data     n_data bytes: the engine's opaque state
    crc32    of everything above

Files are written by a background thread (the engine thread never waits on a disk) to a temporary
name and renamed into place, so a crash leaves a whole file or none. A file that is truncated,
corrupt or from another identity is deleted and counted, never loaded. A write that fails (a full
disk, a read-only directory) turns writing off with one warning; requests never fail for it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from server.engine.prompt_cache.keys import common_prefix, is_prefix, state_key, tokens_from_bytes, tokens_to_bytes
from server.engine.prompt_cache.ram import Entry
from server.engine.prompt_cache.stats import StatsRecorder

log = logging.getLogger(__name__)

MAGIC = b"LSKVST01"
HEADER = struct.Struct("<8s32sQQ")
TRAILER = struct.Struct("<I")
SUFFIX = ".kvstate"


class CorruptStateFile(Exception):
    """A state file that must not be loaded."""


@dataclass(frozen=True)
class _Indexed:
    tokens: list[int]
    size: int  # bytes on disk


def file_size(n_tokens: int, n_data: int) -> int:
    return HEADER.size + 4 * n_tokens + n_data + TRAILER.size


class DiskTier:
    """States under ``root/<identity>``, at most ``capacity`` bytes of files, least recently used first out.

    :meth:`best` and :meth:`load` run on the engine thread, the writes on the tier's own thread;
    the index is shared under a lock.
    """

    def __init__(self, root: Path, *, identity: str, capacity: int, stats: StatsRecorder, max_pending: int = 4) -> None:
        self.dir = root / identity[:32]
        self.capacity = capacity
        self._identity = identity
        self._identity_raw = bytes.fromhex(identity)
        self._stats = stats
        self._index: OrderedDict[str, _Indexed] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pending: queue.Queue[Entry | None] = queue.Queue(max_pending)
        self._writing: set[str] = set()  # keys queued or being written: their bytes must stay as they are
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            self._stop_writing(f"cannot use the prompt cache directory {self.dir}: {exc}")
        self._writer = threading.Thread(target=self._write_loop, name="llamaserve-cache-writer", daemon=True)
        self._writer.start()

    # ---- engine thread ----------------------------------------------------------------------

    def best(self, prompt: list[int], limit: int) -> tuple[str | None, int]:
        """The key of the file sharing the longest prefix with ``prompt`` (at most ``limit``), and that length."""
        found: str | None = None
        longest = 0
        with self._lock:
            for key, indexed in self._index.items():
                n = common_prefix(indexed.tokens, prompt, limit)
                if n > longest:
                    found, longest = key, n
        return found, longest

    def load(self, key: str) -> Entry | None:
        """The state filed under ``key``, checked; None (and the file deleted, if corrupt) otherwise."""
        path = self.dir / (key + SUFFIX)
        try:
            with path.open("rb") as f:
                entry = self._read(f, key, with_data=True)
        except FileNotFoundError:
            self._forget(key)  # evicted by the writer meanwhile: a miss, not a fault
            return None
        except (OSError, CorruptStateFile) as exc:
            self._drop_corrupt(path, key, exc)
            return None
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
        with contextlib.suppress(OSError):
            os.utime(path)  # the LRU order survives a restart
        return entry

    def submit(self, entry: Entry) -> None:
        """Write ``entry`` in the background, unless it is filed already or the writer is behind."""
        if not self.writable:
            return
        with self._lock:
            if entry.key in self._index:
                self._index.move_to_end(entry.key)
                return
            self._writing.add(entry.key)
        try:
            self._pending.put_nowait(entry)
        except queue.Full:
            with self._lock:
                self._writing.discard(entry.key)
            log.debug("prompt cache writer is behind; not writing a %d-token state", len(entry.tokens))

    def is_writing(self, key: str) -> bool:
        """True while the state filed under ``key`` waits for the writer or is being written."""
        with self._lock:
            return key in self._writing

    def close(self, timeout: float = 30.0) -> None:
        """Finish the pending writes (for up to ``timeout`` seconds) and stop the writer."""
        try:
            self._pending.put(None, timeout=timeout)
        except queue.Full:
            return
        self._writer.join(timeout)

    # ---- reading ----------------------------------------------------------------------------

    def _read(self, f: io.BufferedReader, key: str, *, with_data: bool) -> Entry:
        head = f.read(HEADER.size)
        if len(head) != HEADER.size:
            raise CorruptStateFile("truncated header")
        magic, identity, n_tokens, n_data = HEADER.unpack(head)
        if magic != MAGIC or identity != self._identity_raw:
            raise CorruptStateFile("not a state file of this model and context")
        if os.fstat(f.fileno()).st_size != file_size(n_tokens, n_data):
            raise CorruptStateFile("truncated or overlong")
        raw_tokens = f.read(4 * n_tokens)
        tokens = tokens_from_bytes(raw_tokens)
        if state_key(self._identity, tokens) != key:
            raise CorruptStateFile("the tokens do not match the file name")
        data = bytearray(n_data if with_data else 0)
        if with_data:
            if f.readinto(data) != n_data:
                raise CorruptStateFile("truncated data")
            (crc,) = TRAILER.unpack(f.read(TRAILER.size))
            if zlib.crc32(data, zlib.crc32(raw_tokens, zlib.crc32(head))) != crc:
                raise CorruptStateFile("checksum mismatch")
        return Entry(key, tokens, data)

    def _scan(self) -> None:
        """Index the files already there, oldest use first; drop leftovers and corrupt files."""
        files = []
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write a crash interrupted
            elif path.suffix == SUFFIX:
                files.append((path.stat().st_mtime_ns, path))
        for _, path in sorted(files):
            try:
                with path.open("rb") as f:
                    entry = self._read(f, path.stem, with_data=False)
                size = path.stat().st_size
            except (OSError, CorruptStateFile) as exc:
                self._drop_corrupt(path, path.stem, exc)
                continue
            self._index[entry.key] = _Indexed(entry.tokens, size)
            self._bytes += size
        with self._lock:
            self._make_room(0)
            self._report()

    def _drop_corrupt(self, path: Path, key: str, exc: Exception) -> None:
        log.warning("deleting the corrupt prompt cache file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        self._forget(key)
        self._stats.corrupt()

    def _forget(self, key: str) -> None:
        with self._lock:
            indexed = self._index.pop(key, None)
            if indexed is not None:
                self._bytes -= indexed.size
            self._report()

    # ---- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (entry := self._pending.get()) is not None:
            try:
                if self.writable:
                    self._write(entry)
            finally:
                with self._lock:
                    self._writing.discard(entry.key)

    def _write(self, entry: Entry) -> None:
        size = file_size(len(entry.tokens), entry.size)
        if size > self.capacity:
            return
        with self._lock:
            for key in [k for k, i in self._index.items() if is_prefix(i.tokens, entry.tokens)]:
                self._delete(key)  # superseded: the new state restores all they did
            self._make_room(size)
        final = self.dir / (entry.key + SUFFIX)
        tmp = self.dir / f".{entry.key}.{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as f:
                raw_tokens = tokens_to_bytes(entry.tokens)
                head = HEADER.pack(MAGIC, self._identity_raw, len(entry.tokens), entry.size)
                crc = zlib.crc32(entry.data, zlib.crc32(raw_tokens, zlib.crc32(head)))
                for part in (head, raw_tokens, entry.data, TRAILER.pack(crc)):
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._stop_writing(f"cannot write to the prompt cache directory {self.dir}: {exc}")
            return
        with self._lock:
            self._index[entry.key] = _Indexed(entry.tokens, size)
            self._bytes += size
            self._report()

    def _make_room(self, size: int) -> None:
        """Delete the least recently used files until ``size`` more bytes fit; call with the lock held."""
        while self._index and self._bytes + size > self.capacity:
            self._delete(next(iter(self._index)))
            self._stats.count("disk", evictions=1)
        self._report()

    def _delete(self, key: str) -> None:
        indexed = self._index.pop(key)
        self._bytes -= indexed.size
        with contextlib.suppress(OSError):
            (self.dir / (key + SUFFIX)).unlink(missing_ok=True)

    def _report(self) -> None:
        self._stats.usage("disk", n_bytes=self._bytes, entries=len(self._index))

    def _stop_writing(self, why: str) -> None:
        if self.writable:
            self.writable = False
            log.warning("%s; the prompt cache goes on in RAM only", why)
