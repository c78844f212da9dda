"""Both tiers behind one lookup: the longest cached prefix of a prompt, from RAM or from disk.

Saving writes through: a state goes into RAM and, with a disk tier, to a file in the background,
so the disk holds what RAM holds and more, and a restart finds it. Restoring prefers the longer
prefix, and RAM when both are as long.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.engine.prompt_cache.disk import DiskTier
from server.engine.prompt_cache.keys import state_key
from server.engine.prompt_cache.ram import Entry, RamTier
from server.engine.prompt_cache.stats import CacheStats, StatsRecorder


@dataclass(frozen=True)
class PromptCacheConfig:
    ram_bytes: int
    min_tokens: int = 256  # a shorter prefix is recomputed rather than saved or restored
    disk_dir: Path | None = None
    disk_bytes: int = 10 * 2**30


@dataclass(frozen=True)
class Hit:
    n_tokens: int  # leading prompt tokens the entry restores
    entry: Entry
    tier: str


class PromptCache:
    def __init__(self, config: PromptCacheConfig, *, identity: str) -> None:
        self.min_tokens = config.min_tokens
        self._identity = identity
        self._recorder = StatsRecorder()
        self._ram = RamTier(config.ram_bytes)
        self._disk = (
            DiskTier(config.disk_dir, identity=identity, capacity=config.disk_bytes, stats=self._recorder)
            if config.disk_dir is not None
            else None
        )

    @property
    def stats(self) -> CacheStats:
        return self._recorder.snapshot()

    def worth_saving(self, tokens: list[int]) -> bool:
        """Whether a slot holding ``tokens`` should be saved before its cells are overwritten."""
        return len(tokens) >= self.min_tokens and not self._ram.covers(tokens)

    def worth_looking(self, n_to_compute: int) -> bool:
        """Whether a prompt that would compute ``n_to_compute`` tokens asks the cache (and counts a hit or miss)."""
        return n_to_compute >= self.min_tokens

    def save(self, tokens: list[int], data: bytearray) -> None:
        entry = Entry(state_key(self._identity, tokens), list(tokens), data)
        pushed_out = [e for e in self._ram.put(entry) if e is not entry]
        if pushed_out:
            self._recorder.count("ram", evictions=len(pushed_out))
        self._recorder.usage("ram", n_bytes=self._ram.bytes_used, entries=len(self._ram))
        if self._disk is not None:
            self._disk.submit(entry)

    def reusable_buffer(self, tokens: list[int], *, keep: Entry | None = None) -> bytearray | None:
        """The bytes of a RAM entry that a state of ``tokens`` will supersede, taken out of RAM to be
        written over by that state (None when there is none the disk writer is done with).

        A saved state is tens of MB; copied into memory this process already holds it costs about a
        millisecond, where fresh pages cost a page fault each: 15-60 ms for 25 MB on a loaded VM, on
        the new prompt's time to first token. The entries a chat's later state supersedes (its
        earlier turns) are dropped by :meth:`save` anyway; taking one first changes nothing else.
        """
        for old in sorted(self._ram.prefixes_of(tokens), key=lambda e: e.size, reverse=True):
            if old is keep or (self._disk is not None and self._disk.is_writing(old.key)):
                continue
            self._ram.pop(old.key)
            self._recorder.usage("ram", n_bytes=self._ram.bytes_used, entries=len(self._ram))
            return old.data
        return None

    def lookup(self, prompt: list[int], limit: int, *, better_than: int) -> Hit | None:
        """The cached state restoring the most of ``prompt`` (at most ``limit`` tokens), if that is more
        than ``better_than`` and at least ``min_tokens``; counts a hit or a miss per tier asked."""
        floor = max(better_than + 1, self.min_tokens)
        ram_entry, n_ram = self._ram.best(prompt, limit)
        disk_key, n_disk = self._disk.best(prompt, limit) if self._disk is not None else (None, 0)
        if disk_key is not None and n_disk > n_ram and n_disk >= floor and self._disk is not None:
            entry = self._disk.load(disk_key)
            if entry is not None:
                self._recorder.count("ram", misses=1)
                self._recorder.count("disk", hits=1)
                return Hit(n_disk, entry, "disk")
        if ram_entry is not None and n_ram >= floor:
            self._ram.touch(ram_entry.key)
            self._recorder.count("ram", hits=1)
            return Hit(n_ram, ram_entry, "ram")
        self._recorder.count("ram", misses=1)
        if self._disk is not None:
            self._recorder.count("disk", misses=1)
        return None

    def restored(self, n_tokens: int, seconds: float) -> None:
        self._recorder.restored(n_tokens, seconds)

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
