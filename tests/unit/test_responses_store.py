"""The response store: what a client relies on when it stores a response and comes back for it
(after a restart, from another key, long after, while many others write at once)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from server.errors import InvalidRequestError
from server.state import (
    DB_FILE,
    MEMORY,
    ItemPage,
    ResponseStore,
    StateStoreError,
    StoredResponse,
    UnknownItemError,
    default_state_dir,
    resolve_location,
)

DAY = 86400.0


def record(n: int | str, *, owner: str | None = None, items: int = 2, text: str = "hello") -> StoredResponse:
    rid = f"resp_{n}"
    inputs = [
        {"id": f"msg_{n}_{i}", "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        for i in range(items)
    ]
    output = {
        "id": f"msg_{n}_out",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi"}],
    }
    return StoredResponse(
        id=rid,
        owner=owner,
        created_at=1_700_000_000,
        model="smollm2",
        previous_response_id=None,
        response={"id": rid, "object": "response", "status": "completed", "output": [output], "text": text},
        input_items=inputs,
        conversation=[*inputs, output],
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["file", "memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "state") if request.param == "file" else MEMORY


@pytest.fixture
def opened() -> Iterator[Callable[..., ResponseStore]]:
    """``open(location, **bounds)``; every store opened is closed after the test."""
    stores: list[ResponseStore] = []

    def open_store(location: str, **kwargs: Any) -> ResponseStore:
        kwargs.setdefault("max_age_days", None)
        kwargs.setdefault("max_bytes", None)
        store = ResponseStore.open(location, **kwargs)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        store.close()


# ---- round trip -------------------------------------------------------------------------------


def test_put_get_delete_round_trip(location: str, opened: Callable[..., ResponseStore]) -> None:
    store = opened(location)
    original = record(1)
    store.put(original)
    assert store.get("resp_1", None) == original
    assert store.count() == 1
    assert store.delete("resp_1", None) is True
    assert store.get("resp_1", None) is None
    assert store.input_items("resp_1", None, after=None, limit=20, order="asc") is None
    assert store.delete("resp_1", None) is False
    assert store.count() == 0 and store.bytes_used() == 0


def test_put_replaces_the_record_with_the_same_id(location: str, opened: Callable[..., ResponseStore]) -> None:
    store = opened(location)
    store.put(record(1, items=3, text="first"))
    second = record(1, items=1, text="second")
    store.put(second)
    assert store.get("resp_1", None) == second
    assert store.count() == 1
    page = store.input_items("resp_1", None, after=None, limit=20, order="asc")
    assert page == ItemPage(items=second.input_items, has_more=False)  # the first one's extra items are gone


def test_unicode_and_nesting_survive_exactly(opened: Callable[..., ResponseStore], tmp_path: Path) -> None:
    store = opened(str(tmp_path))
    original = record("u", text='Ünïcödé ✓ 東京 \u2028 "quoted" \\ back')
    store.put(original)
    assert store.get("resp_u", None) == original


def test_an_item_without_an_id_is_refused(opened: Callable[..., ResponseStore]) -> None:
    store = opened(MEMORY)
    bad = record(1)
    bad.input_items[1].pop("id")
    with pytest.raises(ValueError, match="'id'"):
        store.put(bad)
    assert store.count() == 0


# ---- a restart keeps them ---------------------------------------------------------------------


def test_a_restart_keeps_every_response(tmp_path: Path, opened: Callable[..., ResponseStore]) -> None:
    location = str(tmp_path / "deep" / "state")  # created with its parents
    first = opened(location)
    originals = [record(i, owner="key-a" if i % 2 else None) for i in range(10)]
    for r in originals:
        first.put(r)
    first.close()
    assert (tmp_path / "deep" / "state" / DB_FILE).is_file()
    second = opened(location)
    assert second.count() == 10
    for r in originals:
        assert second.get(r.id, r.owner) == r


def test_a_new_database_is_readable_by_its_owner_only(tmp_path: Path, opened: Callable[..., ResponseStore]) -> None:
    store = opened(str(tmp_path / "state"))
    store.put(record(1))
    for path in (tmp_path / "state", *(tmp_path / "state").iterdir()):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is open to others"


def test_memory_keeps_nothing_after_close() -> None:
    store = ResponseStore.open(MEMORY, max_age_days=None, max_bytes=None)
    store.put(record(1))
    store.close()
    again = ResponseStore.open(MEMORY, max_age_days=None, max_bytes=None)
    try:
        assert again.get("resp_1", None) is None and again.count() == 0
    finally:
        again.close()


def test_a_closed_store_refuses_calls(opened: Callable[..., ResponseStore]) -> None:
    store = opened(MEMORY)
    store.close()
    with pytest.raises(StateStoreError, match="closed"):
        store.get("resp_1", None)


# ---- owners -----------------------------------------------------------------------------------


def test_another_key_cannot_see_delete_or_list_a_response(location: str, opened: Callable[..., ResponseStore]) -> None:
    store = opened(location)
    mine = record("a", owner="key-a")
    store.put(mine)
    for other in ("key-b", None):
        assert store.get("resp_a", other) is None
        assert store.delete("resp_a", other) is False
        assert store.input_items("resp_a", other, after=None, limit=20, order="asc") is None
        # Even a valid item id tells another key nothing (None, not UnknownItemError).
        assert store.input_items("resp_a", other, after="msg_a_0", limit=20, order="asc") is None
    assert store.get("resp_a", "key-a") == mine  # the failed deletes left it alone


def test_a_response_stored_without_keys_is_not_any_keys(location: str, opened: Callable[..., ResponseStore]) -> None:
    store = opened(location)
    store.put(record("n", owner=None))
    assert store.get("resp_n", "key-a") is None
    assert store.delete("resp_n", "key-a") is False
    assert store.get("resp_n", None) is not None


# ---- input_items pages ------------------------------------------------------------------------


def ids(page: ItemPage | None) -> list[str]:
    assert page is not None
    return [item["id"] for item in page.items]


def test_input_items_pages_forward_and_backward(location: str, opened: Callable[..., ResponseStore]) -> None:
    store = opened(location)
    store.put(record(1, items=5))
    asc = store.input_items("resp_1", None, after=None, limit=2, order="asc")
    assert ids(asc) == ["msg_1_0", "msg_1_1"] and asc is not None and asc.has_more
    asc = store.input_items("resp_1", None, after="msg_1_1", limit=2, order="asc")
    assert ids(asc) == ["msg_1_2", "msg_1_3"] and asc is not None and asc.has_more
    asc = store.input_items("resp_1", None, after="msg_1_3", limit=2, order="asc")
    assert ids(asc) == ["msg_1_4"] and asc is not None and not asc.has_more

    desc = store.input_items("resp_1", None, after=None, limit=3, order="desc")
    assert ids(desc) == ["msg_1_4", "msg_1_3", "msg_1_2"] and desc is not None and desc.has_more
    desc = store.input_items("resp_1", None, after="msg_1_2", limit=3, order="desc")
    assert ids(desc) == ["msg_1_1", "msg_1_0"] and desc is not None and not desc.has_more

    whole = store.input_items("resp_1", None, after=None, limit=5, order="asc")
    assert whole is not None and not whole.has_more and len(whole.items) == 5  # exactly full: no more
    last = store.input_items("resp_1", None, after="msg_1_4", limit=5, order="asc")
    assert last == ItemPage(items=[], has_more=False)


def test_paging_with_after_visits_every_item_once(opened: Callable[..., ResponseStore]) -> None:
    store = opened(MEMORY)
    original = record(1, items=23)
    store.put(original)
    for order in ("asc", "desc"):
        seen: list[str] = []
        after = None
        while True:
            page = store.input_items("resp_1", None, after=after, limit=4, order=order)  # type: ignore[arg-type]
            assert page is not None
            seen += ids(page)
            if not page.has_more:
                break
            after = page.items[-1]["id"]
        expected = [item["id"] for item in original.input_items]
        assert seen == (expected if order == "asc" else expected[::-1])


def test_an_unknown_after_is_a_400_naming_the_parameter(opened: Callable[..., ResponseStore]) -> None:
    store = opened(MEMORY)
    store.put(record(1))
    store.put(record(2))
    with pytest.raises(UnknownItemError) as info:
        store.input_items("resp_1", None, after="msg_nope", limit=20, order="asc")
    assert isinstance(info.value, InvalidRequestError) and info.value.status_code == 400
    assert info.value.param == "after" and "msg_nope" in info.value.message
    with pytest.raises(UnknownItemError):  # another response's item is not this one's
        store.input_items("resp_1", None, after="msg_2_0", limit=20, order="desc")


def test_a_repeated_item_id_still_pages_to_the_end(opened: Callable[..., ResponseStore]) -> None:
    store = opened(MEMORY)
    r = record(1, items=4)
    r.input_items[3]["id"] = r.input_items[1]["id"]  # a client's own ids, repeated
    store.put(r)
    page = store.input_items("resp_1", None, after="msg_1_1", limit=20, order="asc")
    assert page == ItemPage(items=[], has_more=False)  # after its last occurrence: no loop


# ---- bounds -----------------------------------------------------------------------------------


def test_expired_responses_are_not_served_and_are_deleted(tmp_path: Path, opened: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = opened(str(tmp_path), max_age_days=30, clock=clock)
    store.put(record("old"))
    clock.now += 10 * DAY
    store.put(record("young"))
    clock.now += 20.5 * DAY  # old: 30.5 days, young: 20.5 days
    assert store.get("resp_old", None) is None
    assert store.delete("resp_old", None) is False
    assert store.input_items("resp_old", None, after=None, limit=20, order="asc") is None
    assert store.get("resp_young", None) is not None
    probe = opened(MEMORY)
    probe.put(record("young"))
    assert store.count() == 1 and store.bytes_used() == probe.bytes_used()  # the expired one counts no more
    store.put(record("new"))  # a write deletes the expired rows for good
    store.close()
    unbounded = opened(str(tmp_path), clock=clock)
    assert [r for r in ("old", "young", "new") if unbounded.get(f"resp_{r}", None)] == ["young", "new"]


def test_expired_responses_are_deleted_at_open(tmp_path: Path, opened: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    opened(str(tmp_path), clock=clock).put(record(1))
    clock.now += 2 * DAY
    opened(str(tmp_path), max_age_days=1.5, clock=clock).close()
    assert opened(str(tmp_path), clock=clock).count() == 0


def test_zero_max_age_never_expires(opened: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = opened(MEMORY, max_age_days=0, clock=clock)
    store.put(record(1))
    clock.now += 10_000 * DAY
    assert store.get("resp_1", None) is not None


def test_the_byte_bound_evicts_the_oldest_and_keeps_the_newest(
    location: str, opened: Callable[..., ResponseStore]
) -> None:
    clock = Clock()
    probe = opened(MEMORY)
    probe.put(record(0))
    size = probe.bytes_used()  # every record below has this size
    store = opened(location, max_bytes=3 * size + size // 2, clock=clock)
    for i in range(7):
        clock.now += 1
        store.put(record(i))
        assert store.bytes_used() <= 3 * size + size // 2
    assert [i for i in range(7) if store.get(f"resp_{i}", None)] == [4, 5, 6]
    assert store.count() == 3 and store.bytes_used() == 3 * size


def test_oldest_goes_first_even_within_one_clock_tick(opened: Callable[..., ResponseStore]) -> None:
    probe = opened(MEMORY)
    probe.put(record(0))
    size = probe.bytes_used()
    store = opened(MEMORY, max_bytes=2 * size, clock=Clock())  # a clock that never moves
    for i in range(5):
        store.put(record(i))
    assert [i for i in range(5) if store.get(f"resp_{i}", None)] == [3, 4]


def test_a_response_larger_than_the_bound_is_kept_until_the_next(opened: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = opened(MEMORY, max_bytes=100, clock=clock)
    store.put(record("big", text="x" * 1000))
    assert store.get("resp_big", None) is not None  # the client was told store: true
    clock.now += 1
    store.put(record("next", text="x" * 1000))
    assert store.get("resp_big", None) is None and store.get("resp_next", None) is not None


# ---- many writers -----------------------------------------------------------------------------


def test_many_threads_writing_at_once_lose_and_corrupt_nothing(
    location: str, opened: Callable[..., ResponseStore]
) -> None:
    store = opened(location)
    threads, per_thread = 40, 5
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()  # every thread writes at the same moment
        for k in range(per_thread):
            store.put(record(f"{t}_{k}", owner=f"key-{t % 3}", items=3, text=f"thread {t} write {k} " * 20))
            # Reads interleaved with the other threads' writes see whole records only.
            got = store.get(f"resp_{t}_{k}", f"key-{t % 3}")
            assert got is not None and got.response["text"].startswith(f"thread {t} write {k}")

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, t) for t in range(threads)]:
            future.result()
    assert store.count() == threads * per_thread
    for t in range(threads):
        for k in range(per_thread):
            expected = record(f"{t}_{k}", owner=f"key-{t % 3}", items=3, text=f"thread {t} write {k} " * 20)
            assert store.get(expected.id, expected.owner) == expected
    if location != MEMORY:
        store.close()
        with sqlite3.connect(Path(location) / DB_FILE) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT COUNT(*) FROM input_items").fetchone()[0] == threads * per_thread * 3
        conn.close()


# ---- a database that cannot be used -----------------------------------------------------------


def one_paragraph(exc: StateStoreError) -> str:
    assert "\n" not in exc.message
    return exc.message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is no SQLite file, only garbage " * 200)
    with pytest.raises(StateStoreError) as info:
        ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None)
    message = one_paragraph(info.value)
    assert str(tmp_path / DB_FILE) in message and "corrupt" in message and "--state-dir" in message


def test_a_database_with_damaged_pages_is_refused(tmp_path: Path) -> None:
    store = ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None)
    for i in range(200):
        store.put(record(i, text="filler " * 50))
    store.close()
    path = tmp_path / DB_FILE
    data = bytearray(path.read_bytes())
    assert len(data) > 20 * 4096
    data[8 * 4096 : 12 * 4096] = b"\xa5" * (4 * 4096)  # b-tree pages in the middle, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(StateStoreError) as info:
        ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None)
    assert "corrupt" in one_paragraph(info.value)


def test_a_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    # A path under a regular file: no directory can be made there, even by root (tests run as root,
    # where chmod 0500 would not stop a write).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for location in (blocker / "state", blocker):
        with pytest.raises(StateStoreError) as info:
            ResponseStore.open(str(location), max_age_days=None, max_bytes=None)
        message = one_paragraph(info.value)
        assert "cannot be written" in message and str(location) in message and ":memory:" in message


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None).close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateStoreError, match="newer llamaserve") as info:
        ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None)
    one_paragraph(info.value)


def test_the_database_is_in_wal_mode_and_versioned(tmp_path: Path) -> None:
    ResponseStore.open(str(tmp_path), max_age_days=None, max_bytes=None).close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


# ---- where it lives ---------------------------------------------------------------------------


def test_the_default_directory_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_state_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "llamaserve"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir({}) == tmp_path / "home" / ".local" / "share" / "llamaserve"
    # The spec says a relative XDG_DATA_HOME is invalid and is ignored.
    assert default_state_dir({"XDG_DATA_HOME": "relative/dir"}) == tmp_path / "home" / ".local" / "share" / "llamaserve"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_location(None) == str(tmp_path / "xdg" / "llamaserve")
    assert resolve_location(MEMORY) == MEMORY
    assert resolve_location("~/state") == str(tmp_path / "home" / "state")
