"""Sharing one step's prefill room among the prompts waiting for it."""

from __future__ import annotations

import pytest

from server.engine.prefill import PrefillPolicy


def test_first_come_first_served_when_fairness_is_off() -> None:
    assert PrefillPolicy(fair=False).shares(512, [4000, 20]) == [512, 0]


def test_a_short_prompt_behind_a_long_one_gets_all_it_needs_at_once() -> None:
    takes = PrefillPolicy(min_chunk=64).shares(512, [4000, 20])
    assert takes == [492, 20]  # the step stays full: the long prompt takes the rest


def test_equal_shares_with_what_one_does_not_need_going_to_the_others() -> None:
    assert PrefillPolicy(min_chunk=16).shares(300, [1000, 1000, 50]) == [125, 125, 50]


def test_the_room_never_stretches_below_the_minimum_chunk_and_prompts_take_turns() -> None:
    policy = PrefillPolicy(min_chunk=64)
    needs = [1000, 1000, 1000, 1000]
    turns = [policy.shares(128, needs) for _ in range(4)]
    for takes in turns:
        assert sum(takes) == 128
        assert all(t == 0 or t >= 64 for t in takes)
    # Over four steps every prompt had its go.
    assert all(sum(t[i] for t in turns) > 0 for i in range(4))


@pytest.mark.parametrize("room", [1, 7, 64, 511, 512])
@pytest.mark.parametrize("needs", [[1], [3, 3, 3], [600, 1, 2], [100, 100, 100, 100, 100]])
def test_never_more_than_the_room_or_a_prompts_need_and_no_room_wasted(room: int, needs: list[int]) -> None:
    for fair in (True, False):
        takes = PrefillPolicy(fair=fair, min_chunk=64).shares(room, needs)
        assert all(0 <= t <= n for t, n in zip(takes, needs, strict=True))
        assert sum(takes) == min(room, sum(needs))
