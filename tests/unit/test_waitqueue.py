"""The wait queue's order: priority, then weighted round robin across keys, then arrival."""

from __future__ import annotations

from dataclasses import dataclass

from server.runtime.waitqueue import WaitQueue


@dataclass(frozen=True)
class Item:
    name: str
    key_id: str = ""
    priority: int = 0


def drain(q: WaitQueue[Item]) -> list[str]:
    out = []
    while q:
        out.append(q.pop().name)
    return out


def test_lower_priority_goes_first_and_ties_go_by_arrival() -> None:
    q: WaitQueue[Item] = WaitQueue()
    for name, prio in [("a", 0), ("b", 5), ("c", -1), ("d", 0), ("e", -1)]:
        q.push(Item(name, priority=prio))
    assert drain(q) == ["c", "e", "a", "d", "b"]


def test_a_flooding_key_cannot_starve_another() -> None:
    q: WaitQueue[Item] = WaitQueue()
    for i in range(6):
        q.push(Item(f"flood{i}", key_id="flood"))
    q.push(Item("other0", key_id="other"))
    q.push(Item("other1", key_id="other"))
    order = drain(q)
    # The late key is served every other turn, not after the flood's six.
    assert order.index("other0") <= 2 and order.index("other1") <= 4
    assert [n for n in order if n.startswith("flood")] == [f"flood{i}" for i in range(6)]


def test_weights_set_each_keys_share() -> None:
    q: WaitQueue[Item] = WaitQueue({"heavy": 2.0})
    for i in range(8):
        q.push(Item(f"h{i}", key_id="heavy"))
        q.push(Item(f"l{i}", key_id="light"))
    first_nine = drain(q)[:9]
    assert sum(n.startswith("h") for n in first_nine) == 6  # two of every three turns


def test_priority_outranks_fair_share() -> None:
    q: WaitQueue[Item] = WaitQueue({"batch": 100.0})
    q.push(Item("batch", key_id="batch", priority=10))
    q.push(Item("interactive", key_id="ui"))
    assert drain(q) == ["interactive", "batch"]


def test_an_idle_key_banks_no_credit() -> None:
    q: WaitQueue[Item] = WaitQueue()
    for i in range(5):  # "busy" is served alone for a while
        q.push(Item(f"busy{i}", key_id="busy"))
    drain(q)
    for i in range(3):
        q.push(Item(f"busy{i}", key_id="busy"))
        q.push(Item(f"new{i}", key_id="new"))
    # Had "new" kept its pass of 0 it would take its three turns before "busy" got one.
    assert drain(q)[:4] in (["busy0", "new0", "busy1", "new1"], ["new0", "busy0", "new1", "busy1"])


def test_remove_if_counts_and_clear() -> None:
    q: WaitQueue[Item] = WaitQueue()
    for i in range(4):
        q.push(Item(str(i), key_id="a" if i % 2 else "b"))
    assert q.counts() == {"a": 2, "b": 2}
    removed = q.remove_if(lambda it: it.name in {"1", "2"})
    assert sorted(it.name for it in removed) == ["1", "2"]
    assert len(q) == 2 and q.count("a") == 1 and q.count("b") == 1
    assert sorted(it.name for it in q.clear()) == ["0", "3"]
    assert not q and q.counts() == {}


def test_ranked_lists_the_order_pop_would_take_and_leaves_the_queue_alone() -> None:
    q: WaitQueue[Item] = WaitQueue({"heavy": 2.0})
    for i in range(3):
        q.push(Item(f"h{i}", key_id="heavy"))
        q.push(Item(f"l{i}", key_id="light"))
    q.push(Item("urgent", key_id="light", priority=-1))
    ranked = [item.name for item in q.ranked()]
    assert len(q) == 7
    assert ranked == drain(q)
    assert ranked[0] == "urgent"
