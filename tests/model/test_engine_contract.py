"""One engine contract, two engines: the FakeEngine behaves and refuses as the llama.cpp engine does.

Every test runs on a FakeEngine and on a LlamaEngine over the tiny Llama 3 GGUF. Token ids
below 256 are valid in both vocabularies (bytes in the fake, byte tokens in the GGUF), so
the prompts are written as ids, and their lengths are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine.base import (
    EmptyPromptError,
    Engine,
    InvalidGrammarError,
    PromptTooLongError,
    SamplingParams,
    SequenceRefusedError,
    SlotBusyError,
    TokenOutOfRangeError,
)
from server.engine.fake import FakeEngine
from server.engine.llama.engine import LlamaEngine

N_CTX = 64
N_BATCH = 16
GREEDY = SamplingParams(temperature=0.0)
PROMPT = list(range(40, 70))  # 30 tokens: two chunks of prefill


@pytest.fixture(params=["fake", pytest.param("llama", marks=pytest.mark.model)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    made: Engine
    if request.param == "fake":
        made = FakeEngine(n_slots=2, n_ctx_per_seq=N_CTX, n_batch=N_BATCH)
    else:
        path: Path = request.getfixturevalue("tiny_llama3_gguf")
        made = LlamaEngine(str(path), model_id="tiny", n_slots=2, n_ctx_per_seq=N_CTX, n_batch=N_BATCH, n_threads=1)
    yield made
    made.close()


def prefill(engine: Engine, slot: int, prompt: list[int], params: SamplingParams = GREEDY) -> int:
    """Begin ``prompt`` and step until its first token is sampled; returns the reused count."""
    reused = engine.begin(slot, prompt, params)
    for _ in range(len(prompt)):
        if [o.slot for o in engine.step()] == [slot]:
            return reused
    raise AssertionError("the prompt never produced a token")


def test_a_sequence_prefills_in_chunks_then_samples_one_token_per_step(engine: Engine) -> None:
    assert engine.begin(0, PROMPT, GREEDY) == 0
    assert engine.n_cached_cells() == 0
    assert engine.step() == []  # the first chunk: no logits yet
    assert engine.n_cached_cells() == N_BATCH
    first = engine.step()  # the rest of the prompt, and its first token
    assert [o.slot for o in first] == [0] and 0 <= first[0].token < engine.info.n_vocab
    assert engine.n_cached_cells() == len(PROMPT)  # a sampled token holds no cell until fed back
    assert [o.slot for o in engine.step()] == [0]
    assert engine.n_cached_cells() == len(PROMPT) + 1
    engine.release(0)
    assert engine.step() == []
    assert engine.n_cached_cells() == len(PROMPT) + 1  # released with its cache kept


def test_two_slots_decode_in_the_same_step(engine: Engine) -> None:
    prefill(engine, 0, PROMPT)
    engine.begin(1, PROMPT[:10], GREEDY)
    assert sorted(o.slot for o in engine.step()) == [0, 1]
    assert sorted(o.slot for o in engine.step()) == [0, 1]


def test_a_prompt_sharing_a_prefix_reuses_the_cached_cells(engine: Engine) -> None:
    prefill(engine, 0, PROMPT)
    engine.release(0)
    assert engine.cached_prefix_len(0, PROMPT) == len(PROMPT) - 1  # the last token is decoded again
    second = [*PROMPT[:20], 200, 201, 202]
    assert engine.cached_prefix_len(0, second) == 20
    assert engine.begin(0, second, GREEDY) == 20
    assert engine.n_cached_cells() == 20  # the rest of the old cells are dropped
    assert [o.slot for o in engine.step()] == [0]  # three tokens left: one step
    engine.release(0, keep_cache=False)
    assert engine.n_cached_cells() == 0
    assert engine.cached_prefix_len(0, second) == 0
    assert engine.begin(0, second, GREEDY) == 0


def test_a_full_slot_is_no_longer_scheduled(engine: Engine) -> None:
    prefill(engine, 0, list(range(40, 40 + N_CTX - 4)))  # 4 cells left, and a token sampled
    produced = 1
    for _ in range(N_CTX):
        if engine.slot_is_full(0):
            break
        produced += len(engine.step())
    assert engine.slot_is_full(0)
    assert produced == 5  # the prompt's token, then one per free cell
    assert engine.step() == []
    engine.release(0)
    assert not engine.slot_is_full(0)


BAD_GRAMMARS = ["this is not a grammar", 'start ::= "a"', "root ::= ( unclosed", 'root ::= missing-rule "x"']
REFUSALS: list[tuple[str, list[int], SamplingParams, type[SequenceRefusedError]]] = [
    *((f"grammar {g!r}", PROMPT, SamplingParams(grammar=g), InvalidGrammarError) for g in BAD_GRAMMARS),
    ("prompt too long", list(range(40, 40 + N_CTX + 1)), GREEDY, PromptTooLongError),
    ("empty prompt", [], GREEDY, EmptyPromptError),
    ("negative prompt token", [*PROMPT, -1], GREEDY, TokenOutOfRangeError),
    ("logit_bias key past the vocabulary", PROMPT, SamplingParams(logit_bias={10_000: 1.0}), TokenOutOfRangeError),
    ("negative logit_bias key", PROMPT, SamplingParams(logit_bias={-1: 1.0}), TokenOutOfRangeError),
]


@pytest.mark.parametrize(("prompt", "params", "error"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refused_sequence_leaves_the_slot_as_it_was(
    engine: Engine, prompt: list[int], params: SamplingParams, error: type[SequenceRefusedError]
) -> None:
    prefill(engine, 0, PROMPT[:12])
    engine.release(0)
    cached = engine.n_cached_cells()
    with pytest.raises(error):
        engine.begin(0, prompt, params)
    assert engine.n_cached_cells() == cached
    assert engine.cached_prefix_len(0, PROMPT) == 12  # its cache is still there
    assert prefill(engine, 0, PROMPT) == 12  # and the slot runs the next sequence


def test_a_prompt_token_at_n_vocab_is_out_of_range(engine: Engine) -> None:
    with pytest.raises(TokenOutOfRangeError):
        engine.begin(0, [*PROMPT, engine.info.n_vocab], GREEDY)
    with pytest.raises(TokenOutOfRangeError):
        engine.begin(0, PROMPT, SamplingParams(logit_bias={engine.info.n_vocab: 1.0}))
    assert prefill(engine, 0, PROMPT) == 0


def test_a_busy_slot_refuses_and_its_sequence_goes_on(engine: Engine) -> None:
    prefill(engine, 0, PROMPT)
    with pytest.raises(SlotBusyError) as err:
        engine.begin(0, PROMPT[:5], GREEDY)
    assert err.value.slot == 0
    assert [o.slot for o in engine.step()] == [0]
    assert engine.n_cached_cells() == len(PROMPT) + 1


def test_a_prompt_too_long_says_how_long_and_the_limit(engine: Engine) -> None:
    with pytest.raises(PromptTooLongError) as err:
        engine.begin(1, [65] * (N_CTX + 3), GREEDY)
    assert (err.value.n_tokens, err.value.limit) == (N_CTX + 3, N_CTX) == (N_CTX + 3, engine.info.n_ctx_per_seq)


def test_end_of_generation_tokens_include_eos_and_render_as_nothing(engine: Engine) -> None:
    info = engine.info
    assert info.eos_token is not None
    assert info.eos_token in info.eog_tokens
    assert all(0 <= t < info.n_vocab for t in info.eog_tokens)
    assert engine.token_bytes(info.eos_token) == b""
    assert engine.token_bytes(65) == b"A"


def test_a_slot_loses_what_a_new_prompt_does_not_share(engine: Engine) -> None:
    prefill(engine, 0, PROMPT)
    engine.release(0)
    assert engine.slot_loss(1, PROMPT) == 0  # an empty slot has nothing to lose
    assert engine.slot_loss(0, [*PROMPT, 1, 2]) == 0  # the same conversation, one turn on
    assert engine.slot_loss(0, [*PROMPT[:10], 200]) == len(PROMPT) - 10
    assert engine.cache_stats() is None  # neither engine here has a prompt cache


def test_prefill_progress_counts_the_prompt_tokens_in_the_cells(engine: Engine) -> None:
    assert engine.prefill_progress(0) == 0  # an idle slot
    engine.begin(0, PROMPT, GREEDY)
    assert engine.prefill_progress(0) == 0
    engine.step()
    assert engine.prefill_progress(0) == N_BATCH  # one chunk
    engine.step()
    assert engine.prefill_progress(0) == len(PROMPT)  # the rest, and the first token
    engine.step()
    assert engine.prefill_progress(0) == len(PROMPT)  # generating: the prompt is all in
    engine.release(0)
    assert engine.prefill_progress(0) == 0
    assert engine.begin(0, [*PROMPT[:20], 200, 201], GREEDY) == 20
    assert engine.prefill_progress(0) == 20  # a reused prefix counts from the start
