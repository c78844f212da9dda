"""The llama.cpp engine with a KV pool per slot (the server's default), on the bundled SmolLM2.

Every feature that moves cells between sequences must still work when each sequence has its own
pool: slots that run non-adjacent sequence ids in one batch, a prompt cache restoring into
another slot, a paused sequence resumed elsewhere, and the same prompt started in two slots.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.base import SamplingParams
from server.engine.llama.engine import LlamaEngine
from server.engine.prompt_cache.cache import PromptCacheConfig
from tests.model.test_engine_llama import GREEDY, prompt_of, run, text_of

pytestmark = pytest.mark.model

ITALY = "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n"
SHIPS = "<|im_start|>user\n" + "Tell me about ships. " * 30 + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def unified(smollm2_path: str) -> Iterator[LlamaEngine]:
    engine = LlamaEngine(smollm2_path, model_id="u", n_slots=4, n_ctx_per_seq=512, n_batch=128)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def split_engine(smollm2_path: str) -> Iterator[LlamaEngine]:
    engine = LlamaEngine(
        smollm2_path,
        model_id="s",
        n_slots=4,
        n_ctx_per_seq=512,
        n_batch=128,
        kv_unified=False,
        prompt_cache=PromptCacheConfig(ram_bytes=256 * 2**20, min_tokens=32),
    )
    yield engine
    engine.close()


@pytest.fixture
def split(split_engine: LlamaEngine) -> Iterator[LlamaEngine]:
    yield split_engine
    for slot in range(split_engine.info.n_slots):
        split_engine.release(slot, keep_cache=False)


def test_greedy_output_is_the_unified_pools_in_slots_that_are_not_adjacent(
    unified: LlamaEngine, split: LlamaEngine
) -> None:
    france, italy = prompt_of(unified), prompt_of(unified, ITALY)
    want_france = run(unified, {0: GREEDY}, france, 12)[0]
    want_italy = run(unified, {0: GREEDY}, italy, 12)[0]
    # Sequences 1 and 3 in one batch: llama.cpp splits it by pool, the output must not change.
    split.begin(1, france, GREEDY)
    split.begin(3, italy, GREEDY)
    got: dict[int, list[int]] = {1: [], 3: []}
    running = {1, 3}
    while running:
        for o in split.step():
            if o.slot in running:
                got[o.slot].append(o.token)
                if o.token in split.info.eog_tokens or len(got[o.slot]) >= 12:
                    split.release(o.slot)
                    running.discard(o.slot)
    assert got == {1: want_france, 3: want_italy}
    assert "Rome" in text_of(split, got[3])


def test_a_slot_borrows_another_slots_prefix_by_copying_it_and_answers_alike(split: LlamaEngine) -> None:
    ships = prompt_of(split, SHIPS)
    want = run(split, {0: GREEDY}, ships, 10)[0]
    # Another pool: the cells cannot be shared, so slot 0's state is copied into slot 2 and trimmed.
    assert split.begin(2, ships, GREEDY) == len(ships) - 1
    split.release(2)
    assert run(split, {2: GREEDY}, ships, 10)[2] == want
    assert split.cached_prefix_len(0, ships) == len(ships) - 1  # the donor keeps its cells


def test_a_short_shared_prefix_is_computed_rather_than_copied(split: LlamaEngine) -> None:
    france = prompt_of(split)
    run(split, {0: GREEDY}, france, 4)
    assert len(france) - 1 < 16  # fewer tokens than a copy is worth
    assert split.begin(2, france, GREEDY) == 0


def test_a_long_donor_is_not_copied_for_a_few_shared_tokens(split: LlamaEngine) -> None:
    ships, italy = prompt_of(split, SHIPS), prompt_of(split, ITALY)
    run(split, {0: GREEDY}, ships, 4)
    shared = next(i for i, (a, b) in enumerate(zip(ships, italy, strict=False)) if a != b)
    assert 0 < shared < 16  # only the role header: copying ~190 cells to spare it is not worth it
    assert split.begin(1, italy, GREEDY) == 0


def test_the_same_prompt_in_two_slots_is_computed_once_and_copied_to_the_other(split: LlamaEngine) -> None:
    # The n choices of one request: the second waits for the first's prefill and gets a copy.
    ships = prompt_of(split, SHIPS)
    before = split.prefilled_tokens
    seeded = SamplingParams(temperature=0.8, seed=1)
    out = run(split, {0: seeded, 2: seeded}, ships, 10)
    assert split.prefilled_tokens - before == len(ships)
    assert out[0] == out[2]


def test_a_cached_prompt_is_restored_into_another_slot(split: LlamaEngine) -> None:
    ships = prompt_of(split, SHIPS)
    fresh = run(split, {0: GREEDY}, ships, 8)[0]
    # Slot 0 takes another prompt: its state goes to the cache, and slot 3 gets it back from there.
    run(split, {0: GREEDY}, prompt_of(split, ITALY), 2)
    assert split.begin(3, ships, GREEDY) == len(ships) - 1
    split.release(3)
    assert run(split, {3: GREEDY}, ships, 8)[3] == fresh


def test_a_paused_sequence_resumes_in_another_slot_without_a_changed_token(split: LlamaEngine) -> None:
    params = SamplingParams(temperature=0.9, seed=7)
    france = prompt_of(split)
    want = run(split, {1: params}, france, 16)[1]
    split.release(1, keep_cache=False)
    split.begin(1, france, params)
    got: list[int] = []
    while len(got) < 6:
        got += [o.token for o in split.step()]
    paused = split.pause(1)
    split.resume(2, paused)
    while len(got) < 16:
        got += [o.token for o in split.step() if o.slot == 2]
    assert got == want
