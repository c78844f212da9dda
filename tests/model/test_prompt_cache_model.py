"""The prompt cache on the bundled SmolLM2: a prompt evicted from its slot comes back restored, not recomputed.

Correctness first: at temperature 0 a prompt answered from a restored state (from RAM, or from
disk in a fresh engine, as after a restart) generates the same tokens as computed from scratch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.engine.base import SamplingParams
from server.engine.llama.engine import LlamaEngine
from server.engine.prompt_cache.cache import PromptCache, PromptCacheConfig
from server.engine.prompt_cache.disk import SUFFIX

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)
N_NEW = 12
MIN_TOKENS = 32
STORY = (
    "<|im_start|>system\nYou are a careful assistant who answers in one short paragraph. "
    + " ".join(f"Rule {i}: be precise about item {i * 7 % 23}." for i in range(30))
    + "<|im_end|>\n<|im_start|>user\nWhat is rule 12 about?<|im_end|>\n<|im_start|>assistant\n"
)
OTHER = (
    "<|im_start|>system\nYou translate English to French. "
    + " ".join(f"Word {i} is number {i * 3}." for i in range(30))
    + "<|im_end|>\n<|im_start|>user\nTranslate 'cat'.<|im_end|>\n<|im_start|>assistant\n"
)


def make_engine(path: str, cache: PromptCacheConfig | None, *, n_ctx: int = 512) -> LlamaEngine:
    # One slot: every new prompt evicts the one before, as a full pool does.
    return LlamaEngine(path, model_id="smollm2", n_slots=1, n_ctx_per_seq=n_ctx, n_batch=64, prompt_cache=cache)


def generate(engine: LlamaEngine, prompt: list[int]) -> tuple[int, list[int]]:
    """Greedy ``N_NEW`` tokens for ``prompt`` in slot 0; returns (tokens reused, tokens generated)."""
    reused = engine.begin(0, prompt, GREEDY)
    out: list[int] = []
    while len(out) < N_NEW:
        out.extend(o.token for o in engine.step())
    engine.release(0)
    return reused, out


@pytest.fixture(scope="module")
def prompts(smollm2_path: str) -> tuple[list[int], list[int]]:
    engine = make_engine(smollm2_path, None)
    try:
        story = engine.tokenize(STORY, add_special=True, parse_special=True)
        other = engine.tokenize(OTHER, add_special=True, parse_special=True)
    finally:
        engine.close()
    assert len(story) > 200 and len(other) > 200
    return story, other


@pytest.fixture(scope="module")
def from_scratch(smollm2_path: str, prompts: tuple[list[int], list[int]]) -> list[int]:
    """The reference: the story's reply computed by an engine with no cache at all."""
    engine = make_engine(smollm2_path, None)
    try:
        reused, tokens = generate(engine, prompts[0])
    finally:
        engine.close()
    assert reused == 0
    return tokens


@pytest.fixture
def ram_engine(smollm2_path: str) -> Iterator[LlamaEngine]:
    engine = make_engine(smollm2_path, PromptCacheConfig(ram_bytes=64 * 2**20, min_tokens=MIN_TOKENS))
    yield engine
    engine.close()


def test_an_evicted_prompt_is_restored_from_ram_and_generates_the_same_tokens(
    ram_engine: LlamaEngine, prompts: tuple[list[int], list[int]], from_scratch: list[int]
) -> None:
    story, other = prompts
    assert generate(ram_engine, story) == (0, from_scratch)
    assert generate(ram_engine, other)[0] < MIN_TOKENS  # evicts the story from the only slot, into the cache
    before = ram_engine.prefilled_tokens
    reused, tokens = generate(ram_engine, story)
    assert reused == len(story) - 1  # all but the last token, which is decoded again for its logits
    assert ram_engine.prefilled_tokens - before == 1
    assert tokens == from_scratch
    stats = ram_engine.cache_stats()
    assert stats is not None
    assert (stats.ram.hits, stats.ram.entries) == (1, 2)  # the story, and the other prompt it evicted
    assert stats.restored_tokens == len(story) - 1 and sum(stats.restore_counts) == 1
    assert stats.ram.bytes > 20_000 * len(story)  # SmolLM2 keeps ~23 KB of K and V per token


def test_a_longer_prompt_restores_the_cached_prefix_and_computes_only_the_rest(
    ram_engine: LlamaEngine, prompts: tuple[list[int], list[int]]
) -> None:
    story, other = prompts
    _, reply = generate(ram_engine, story)
    generate(ram_engine, other)
    follow_up = [*story, *reply, *ram_engine.tokenize("<|im_end|>\n", add_special=False, parse_special=True)]
    reused, _ = generate(ram_engine, follow_up)
    # The slot held the story and all but the last reply token (the last was sampled, never decoded).
    assert reused == len(story) + len(reply) - 1


def test_a_chats_later_state_saved_over_its_earlier_one_restores_the_same_tokens(
    smollm2_path: str, ram_engine: LlamaEngine, prompts: tuple[list[int], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    story, other = prompts
    next_turn = ram_engine.tokenize(
        "<|im_end|>\n<|im_start|>user\nAnd rule 3?<|im_end|>\n<|im_start|>assistant\n",
        add_special=False,
        parse_special=True,
    )
    reused_buffers: list[bool] = []
    take = PromptCache.reusable_buffer

    def spy(self: PromptCache, tokens: list[int], **kw: Any) -> bytearray | None:
        buf = take(self, tokens, **kw)
        reused_buffers.append(buf is not None)
        return buf

    monkeypatch.setattr(PromptCache, "reusable_buffer", spy)
    _, reply = generate(ram_engine, story)
    generate(ram_engine, other)  # the story's state is saved in fresh memory
    second = [*story, *reply, *next_turn]
    _, reply2 = generate(ram_engine, second)  # restored from that state
    generate(ram_engine, other)  # the longer story state is written over the earlier one's bytes
    assert reused_buffers == [False, False, True]  # the story, the other prompt, the story again
    third = [*second, *reply2, *next_turn]
    reused, tokens = generate(ram_engine, third)
    assert reused == len(second) + len(reply2) - 1
    stats = ram_engine.cache_stats()
    assert stats is not None and stats.ram.entries == 2  # the latest story state and the other prompt
    scratch = make_engine(smollm2_path, None)
    try:
        assert generate(scratch, third) == (0, tokens)
    finally:
        scratch.close()


def test_a_short_prompt_is_not_worth_caching(ram_engine: LlamaEngine, prompts: tuple[list[int], list[int]]) -> None:
    story, other = prompts
    short = story[: MIN_TOKENS - 20]  # with its reply, still shorter than MIN_TOKENS
    generate(ram_engine, short)
    generate(ram_engine, other)
    assert generate(ram_engine, short)[0] < MIN_TOKENS
    stats = ram_engine.cache_stats()
    assert stats is not None and stats.ram.entries == 1  # only the long one was saved


def test_the_cache_off_recomputes_an_evicted_prompt(smollm2_path: str, prompts: tuple[list[int], list[int]]) -> None:
    engine = make_engine(smollm2_path, None)
    try:
        story, other = prompts
        generate(engine, story)
        generate(engine, other)
        assert generate(engine, story)[0] < MIN_TOKENS  # the chat template's first tokens only
        assert engine.cache_stats() is None
    finally:
        engine.close()


def disk_config(directory: Path) -> PromptCacheConfig:
    return PromptCacheConfig(ram_bytes=64 * 2**20, min_tokens=MIN_TOKENS, disk_dir=directory)


@pytest.fixture(scope="module")
def filled(smollm2_path: str, tmp_path_factory: pytest.TempPathFactory, prompts: tuple[list[int], list[int]]) -> Path:
    """A cache directory as a first run leaves it: the story's state, written in the background."""
    directory = tmp_path_factory.mktemp("filled")
    engine = make_engine(smollm2_path, disk_config(directory))
    try:
        generate(engine, prompts[0])
        generate(engine, prompts[1])  # the story goes to RAM, and to disk in the background
    finally:
        engine.close()  # waits for the pending writes
    return directory


def fill_disk(filled: Path, directory: Path) -> None:
    shutil.copytree(filled, directory, dirs_exist_ok=True)


def test_after_a_restart_the_prompt_is_restored_from_disk_with_the_same_tokens(
    smollm2_path: str, filled: Path, tmp_path: Path, prompts: tuple[list[int], list[int]], from_scratch: list[int]
) -> None:
    fill_disk(filled, tmp_path)
    assert len(list(tmp_path.rglob(f"*{SUFFIX}"))) == 1
    restarted = make_engine(smollm2_path, disk_config(tmp_path))
    try:
        reused, tokens = generate(restarted, prompts[0])
        assert reused == len(prompts[0]) - 1
        assert tokens == from_scratch
        stats = restarted.cache_stats()
        assert stats is not None
        assert (stats.disk.hits, stats.ram.misses, stats.corrupt_files) == (1, 1, 0)
    finally:
        restarted.close()


def test_a_corrupt_file_is_deleted_counted_and_never_loaded(
    smollm2_path: str, filled: Path, tmp_path: Path, prompts: tuple[list[int], list[int]], from_scratch: list[int]
) -> None:
    fill_disk(filled, tmp_path)
    (state,) = tmp_path.rglob(f"*{SUFFIX}")
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the K/V data: only the checksum can tell
    state.write_bytes(raw)
    restarted = make_engine(smollm2_path, disk_config(tmp_path))
    try:
        assert generate(restarted, prompts[0]) == (0, from_scratch)
        stats = restarted.cache_stats()
        assert stats is not None and (stats.corrupt_files, stats.disk.hits) == (1, 0)
        assert not state.exists()
    finally:
        restarted.close()


def test_another_context_size_never_loads_the_states(
    smollm2_path: str, filled: Path, tmp_path: Path, prompts: tuple[list[int], list[int]]
) -> None:
    fill_disk(filled, tmp_path)
    other_ctx = make_engine(smollm2_path, disk_config(tmp_path), n_ctx=1024)
    try:
        assert generate(other_ctx, prompts[0])[0] == 0
        stats = other_ctx.cache_stats()
        assert stats is not None and (stats.disk.entries, stats.disk.hits, stats.corrupt_files) == (0, 0, 0)
    finally:
        other_ctx.close()
