"""The RAM tier: saved states in host memory, bounded by bytes, least recently used first out."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from server.engine.prompt_cache.keys import common_prefix, is_prefix


@dataclass(frozen=True, eq=False)
class Entry:
    """One saved sequence state: the tokens its cells hold, and the opaque bytes that restore them.

    ``data`` is never written to after the entry is made (the disk writer reads it from another thread).
    """

    key: str
    tokens: list[int]
    data: bytearray

    @property
    def size(self) -> int:
        return len(self.data)


class RamTier:
    """Entries by key in LRU order (oldest first), at most ``capacity`` bytes of state in all."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def put(self, entry: Entry) -> list[Entry]:
        """Keep ``entry`` as the most recent; return what left to make room (``[entry]`` if it never fits).

        Entries whose tokens are a prefix of the new one's are dropped, not returned: the new
        state restores everything they did (a chat's earlier turns under its latest one).
        """
        if entry.size > self.capacity:
            return [entry]
        if entry.key in self._entries:
            self._entries.move_to_end(entry.key)
            return []
        for old in [e for e in self._entries.values() if is_prefix(e.tokens, entry.tokens)]:
            self._remove(old.key)
        evicted = []
        while self.bytes_used + entry.size > self.capacity:
            _, oldest = self._entries.popitem(last=False)
            self.bytes_used -= oldest.size
            evicted.append(oldest)
        self._entries[entry.key] = entry
        self.bytes_used += entry.size
        return evicted

    def best(self, prompt: list[int], limit: int) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` (at most ``limit`` tokens), and that length."""
        found: Entry | None = None
        longest = 0
        for e in self._entries.values():
            n = common_prefix(e.tokens, prompt, limit)
            if n > longest:
                found, longest = e, n
        return found, longest

    def covers(self, tokens: list[int]) -> bool:
        """True when some entry restores all of ``tokens`` (it holds them, or more after them)."""
        return any(is_prefix(tokens, e.tokens) for e in self._entries.values())

    def touch(self, key: str) -> None:
        self._entries.move_to_end(key)

    def prefixes_of(self, tokens: list[int]) -> list[Entry]:
        """The entries whose tokens are a prefix of ``tokens`` (a state of ``tokens`` supersedes them)."""
        return [e for e in self._entries.values() if is_prefix(e.tokens, tokens)]

    def pop(self, key: str) -> Entry:
        """Take the entry out; its bytes are the caller's from now on."""
        old = self._entries[key]
        self._remove(key)
        return old

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key)
        self.bytes_used -= old.size
