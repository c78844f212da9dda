"""The prompt cache's engine-agnostic parts: keys, the RAM tier, the disk tier, both behind one lookup.

States are opaque bytes here, so no model is needed; tests/model/test_prompt_cache_model.py
restores real llama.cpp states.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from server.api.engines import DEFAULT_CACHE_RAM, prompt_cache_config
from server.engine.prompt_cache import disk as disk_module
from server.engine.prompt_cache.cache import PromptCache, PromptCacheConfig
from server.engine.prompt_cache.disk import SUFFIX, DiskTier, file_size
from server.engine.prompt_cache.keys import common_prefix, identity_digest, state_key
from server.engine.prompt_cache.ram import Entry, RamTier
from server.engine.prompt_cache.stats import RESTORE_BUCKETS, StatsRecorder
from server.settings import Settings

IDENTITY = identity_digest({"model": "m.gguf", "n_ctx": 512})


def entry(tokens: list[int], size: int = 100, fill: int = 7) -> Entry:
    return Entry(state_key(IDENTITY, tokens), tokens, bytearray([fill]) * size)


# ---- keys ---------------------------------------------------------------------------------------


def test_common_prefix_is_bounded_by_the_limit() -> None:
    a, b = list(range(100)), [*range(60), 999]
    assert common_prefix(a, b, 1000) == 60
    assert common_prefix(a, b, 10) == 10
    assert common_prefix([1], [2], 5) == 0


def test_a_state_key_names_the_tokens_and_the_identity() -> None:
    other = identity_digest({"model": "m.gguf", "n_ctx": 1024})
    assert state_key(IDENTITY, [1, 2, 3]) == state_key(IDENTITY, [1, 2, 3])
    assert state_key(IDENTITY, [1, 2, 3]) != state_key(IDENTITY, [1, 2, 4])
    assert state_key(IDENTITY, [1, 2, 3]) != state_key(other, [1, 2, 3])


# ---- RAM tier -----------------------------------------------------------------------------------


def test_ram_evicts_the_least_recently_used_to_stay_within_its_bytes() -> None:
    ram = RamTier(capacity=300)
    a, b, c, d = entry([1, 1]), entry([2, 2]), entry([3, 3]), entry([4, 4])
    for e in (a, b, c):
        assert ram.put(e) == []
    ram.touch(a.key)  # a was used: b is now the oldest
    assert ram.put(d) == [b]
    assert ram.bytes_used == 300 and len(ram) == 3 and b.key not in ram


def test_ram_refuses_a_state_larger_than_all_of_it() -> None:
    ram = RamTier(capacity=50)
    big = entry([1, 2])
    assert ram.put(big) == [big] and len(ram) == 0 and ram.bytes_used == 0


def test_a_longer_state_replaces_the_states_of_its_prefixes() -> None:
    ram = RamTier(capacity=1000)
    turn1, other = entry([5, 6, 7]), entry([9, 9])
    ram.put(turn1)
    ram.put(other)
    turn2 = entry([5, 6, 7, 8, 9])
    assert ram.put(turn2) == []  # turn1 is superseded, not evicted
    assert turn1.key not in ram and other.key in ram and ram.bytes_used == 200


def test_ram_finds_the_longest_shared_prefix() -> None:
    ram = RamTier(capacity=1000)
    short, long_ = entry([1, 2, 3, 50]), entry([1, 2, 3, 4, 5, 60])
    ram.put(short)
    ram.put(long_)
    assert ram.best([1, 2, 3, 4, 5, 6, 7], limit=6) == (long_, 5)
    assert ram.best([1, 2, 3, 4, 5, 6, 7], limit=3)[1] == 3
    assert ram.best([8], limit=1) == (None, 0)
    assert ram.covers([1, 2, 3, 4]) and not ram.covers([1, 2, 3, 4, 5, 60, 61])


# ---- disk tier ----------------------------------------------------------------------------------


def disk(root: Path, capacity: int = 10**6, stats: StatsRecorder | None = None) -> DiskTier:
    return DiskTier(root, identity=IDENTITY, capacity=capacity, stats=stats or StatsRecorder())


def test_a_state_written_to_disk_is_found_after_a_restart(tmp_path: Path) -> None:
    first = disk(tmp_path)
    e = entry(list(range(10, 40)), size=1000, fill=3)
    first.submit(e)
    first.close()
    files = list(tmp_path.rglob(f"*{SUFFIX}"))
    assert [f.name for f in files] == [e.key + SUFFIX]
    assert files[0].stat().st_size == file_size(30, 1000)
    assert not list(tmp_path.rglob("*.tmp"))  # written under a temporary name, renamed into place
    stats = StatsRecorder()
    second = disk(tmp_path, stats=stats)
    key, n = second.best([*range(10, 30), 99], limit=100)
    assert (key, n) == (e.key, 20)
    loaded = second.load(e.key)
    assert loaded is not None and loaded.tokens == e.tokens and loaded.data == e.data
    assert (stats.snapshot().disk.entries, stats.snapshot().disk.bytes) == (1, file_size(30, 1000))
    second.close()


def test_another_identity_never_sees_the_files(tmp_path: Path) -> None:
    first = disk(tmp_path)
    first.submit(entry([1, 2, 3]))
    first.close()
    other = DiskTier(tmp_path, identity=identity_digest({"model": "other"}), capacity=10**6, stats=StatsRecorder())
    assert other.best([1, 2, 3], limit=3) == (None, 0)
    other.close()


def written(tmp_path: Path, e: Entry) -> Path:
    tier = disk(tmp_path)
    tier.submit(e)
    tier.close()
    (path,) = tmp_path.rglob(f"*{SUFFIX}")
    return path


@pytest.mark.parametrize("damage", ["flip a data byte", "truncate", "flip a token"])
def test_a_corrupt_file_is_deleted_and_counted_never_loaded(tmp_path: Path, damage: str) -> None:
    e = entry(list(range(50)), size=5000)
    path = written(tmp_path, e)
    raw = bytearray(path.read_bytes())
    if damage == "flip a data byte":
        raw[-100] ^= 1
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[disk_module.HEADER.size + 8] ^= 1
    path.write_bytes(raw)
    stats = StatsRecorder()
    tier = disk(tmp_path, stats=stats)
    key, _ = tier.best(list(range(50)), limit=50)
    assert key is None or tier.load(key) is None  # bad sizes are caught by the scan, bad bytes on load
    assert not path.exists()
    assert stats.snapshot().corrupt_files == 1 and stats.snapshot().disk.entries == 0
    tier.close()


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    tier = disk(tmp_path)
    tier.close()
    leftover = tier.dir / ".abc.123.tmp"
    leftover.write_bytes(b"half a write")
    disk(tmp_path).close()
    assert not leftover.exists()


def test_disk_evicts_the_least_recently_used_files_to_stay_within_its_bytes(tmp_path: Path) -> None:
    one = file_size(2, 100)
    stats = StatsRecorder()
    tier = disk(tmp_path, capacity=2 * one, stats=stats)
    a, b, c = entry([1, 1]), entry([2, 2]), entry([3, 3])
    for e in (a, b):
        tier.submit(e)
    tier.close()
    for path in tmp_path.rglob(f"*{SUFFIX}"):  # written an hour ago (file times may be coarser than a test)
        os.utime(path, (path.stat().st_mtime - 3600,) * 2)
    tier = disk(tmp_path, capacity=2 * one, stats=stats)
    assert tier.load(a.key) is not None  # a is now the most recently used, also after a restart
    tier.close()
    tier = disk(tmp_path, capacity=2 * one, stats=stats)
    tier.submit(c)
    tier.close()
    names = {p.stem for p in tmp_path.rglob(f"*{SUFFIX}")}
    assert names == {a.key, c.key}
    assert stats.snapshot().disk.evictions == 1


def test_a_full_disk_turns_writing_off_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_module.os, "fsync", no_space)
    tier = disk(tmp_path)
    with caplog.at_level(logging.WARNING, logger=disk_module.__name__):
        tier.submit(entry([1, 2]))
        tier.close()
    assert not tier.writable
    tier.submit(entry([3, 4]))  # ignored: no second warning, no exception
    assert [r.getMessage() for r in caplog.records if "RAM only" in r.getMessage()] == [
        f"cannot write to the prompt cache directory {tier.dir}: [Errno 28] No space left on device; "
        "the prompt cache goes on in RAM only"
    ]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(f"*{SUFFIX}"))


# ---- both tiers ---------------------------------------------------------------------------------


def cache(tmp_path: Path | None, ram_bytes: int = 10**6) -> PromptCache:
    return PromptCache(PromptCacheConfig(ram_bytes=ram_bytes, min_tokens=4, disk_dir=tmp_path), identity=IDENTITY)


def test_lookup_finds_the_longest_prefix_and_counts_hits_and_misses() -> None:
    c = cache(None)
    c.save([1, 2, 3, 4, 5, 6], bytearray(10))
    hit = c.lookup([1, 2, 3, 4, 5, 9], limit=5, better_than=0)
    assert hit is not None and (hit.n_tokens, hit.tier) == (5, "ram")
    assert c.lookup([1, 2, 3, 4, 5, 9], limit=5, better_than=5) is None  # the slot already holds as much
    assert c.lookup([1, 2, 3, 7, 7, 7], limit=5, better_than=0) is None  # 3 tokens: under min_tokens
    stats = c.stats
    assert (stats.ram.hits, stats.ram.misses, stats.ram.entries, stats.ram.bytes) == (1, 2, 1, 10)


def test_a_state_evicted_from_ram_is_restored_from_disk(tmp_path: Path) -> None:
    c = cache(tmp_path, ram_bytes=10)
    c.save([1, 2, 3, 4, 5], bytearray(b"a" * 10))
    c.save([7, 7, 7, 7, 7], bytearray(b"b" * 10))  # pushes the first out of RAM
    c.close()  # the writes are done
    c = cache(tmp_path, ram_bytes=10)
    hit = c.lookup([1, 2, 3, 4, 5, 6], limit=5, better_than=0)
    assert hit is not None and hit.tier == "disk" and hit.entry.data == bytearray(b"a" * 10)
    assert (c.stats.disk.hits, c.stats.ram.misses, c.stats.ram.evictions) == (1, 1, 0)
    c.close()


def test_a_longer_prefix_on_disk_wins_over_a_shorter_one_in_ram(tmp_path: Path) -> None:
    c = cache(tmp_path, ram_bytes=10)
    c.save([1, 2, 3, 4, 5, 6, 7], bytearray(10))
    c.save([1, 2, 3, 4, 9], bytearray(10))  # replaces the longer one in RAM; both are on disk
    c.close()
    c = cache(tmp_path, ram_bytes=10)
    c.save([1, 2, 3, 4, 9], bytearray(10))
    hit = c.lookup([1, 2, 3, 4, 5, 6, 7, 8], limit=7, better_than=0)
    assert hit is not None and (hit.tier, hit.n_tokens) == ("disk", 7)
    c.close()


def test_a_chats_later_state_is_written_into_the_memory_of_its_earlier_one() -> None:
    c = cache(None)
    earlier = bytearray(b"a" * 10)
    c.save([1, 2, 3, 4, 5], earlier)
    c.save([7, 7, 7, 7, 7], bytearray(b"b" * 10))
    assert c.reusable_buffer([9, 9, 9, 9, 9, 9]) is None  # supersedes nothing: fresh memory
    buf = c.reusable_buffer([1, 2, 3, 4, 5, 6, 7])
    assert buf is earlier  # the very block, not a copy
    # It left RAM: the new state restores all it did, and its bytes are about to be overwritten.
    assert c.lookup([1, 2, 3, 4, 5, 9], limit=5, better_than=0) is None
    assert (c.stats.ram.entries, c.stats.ram.bytes) == (1, 10)


def test_the_state_about_to_be_restored_is_never_written_over() -> None:
    c = cache(None)
    c.save([1, 2, 3, 4, 5], bytearray(10))
    hit = c.lookup([1, 2, 3, 4, 5, 9], limit=5, better_than=0)
    assert hit is not None
    assert c.reusable_buffer([1, 2, 3, 4, 5, 6], keep=hit.entry) is None
    assert c.stats.ram.entries == 1


def test_a_state_the_disk_writer_still_holds_is_never_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, release = threading.Event(), threading.Event()
    write = DiskTier._write

    def slow_write(self: DiskTier, e: Entry) -> None:
        writing.set()
        release.wait(10)
        write(self, e)

    monkeypatch.setattr(DiskTier, "_write", slow_write)
    c = cache(tmp_path)
    c.save([1, 2, 3, 4, 5], bytearray(b"a" * 10))
    assert writing.wait(10)
    assert c.reusable_buffer([1, 2, 3, 4, 5, 6]) is None  # the file would get the new state's bytes
    release.set()
    c.close()  # the write is done
    buf = c.reusable_buffer([1, 2, 3, 4, 5, 6])
    assert buf == bytearray(b"a" * 10)
    restarted = cache(tmp_path)
    hit = restarted.lookup([1, 2, 3, 4, 5, 9], limit=5, better_than=0)
    assert hit is not None and hit.tier == "disk" and hit.entry.data == bytearray(b"a" * 10)
    restarted.close()


def test_restore_times_fall_in_their_buckets() -> None:
    rec = StatsRecorder()
    rec.restored(100, 0.0007)
    rec.restored(50, 100.0)
    s = rec.snapshot()
    assert s.restored_tokens == 150 and s.restore_seconds_sum == pytest.approx(100.0007)
    assert s.restore_counts[RESTORE_BUCKETS.index(0.001)] == 1 and s.restore_counts[-1] == 1


# ---- settings -> config -------------------------------------------------------------------------


def test_cache_settings_become_the_engines_config(tmp_path: Path) -> None:
    config = prompt_cache_config(
        Settings(cache_ram=512, cache_min_tokens=100, cache_dir=str(tmp_path), cache_disk=2048)
    )
    assert config == PromptCacheConfig(
        ram_bytes=512 * 2**20, min_tokens=100, disk_dir=tmp_path, disk_bytes=2048 * 2**20
    )
    assert prompt_cache_config(Settings(cache_ram=0)) is None  # off
    assert prompt_cache_config(Settings(cache_ram=0, cache_dir=str(tmp_path))) is not None  # disk only
    default = prompt_cache_config(Settings())
    assert default is not None and 0 < default.ram_bytes <= DEFAULT_CACHE_RAM and default.disk_dir is None
