"""LlamaEngine.reset(): the context is rebuilt and the engine decodes exactly as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.base import SamplingParams
from server.engine.llama.engine import LlamaEngine

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine(smollm2_path: str) -> Iterator[LlamaEngine]:
    e = LlamaEngine(smollm2_path, model_id="smollm2", n_slots=2, n_ctx_per_seq=256, n_batch=64)
    yield e
    e.close()


def greedy(engine: LlamaEngine, slot: int, n: int = 8) -> list[int]:
    engine.begin(slot, engine.tokenize(PROMPT, add_special=True, parse_special=True), GREEDY)
    out: list[int] = []
    while len(out) < n:
        out.extend(o.token for o in engine.step() if o.slot == slot)
    engine.release(slot)
    return out[:n]


def test_reset_in_the_middle_of_a_sequence_frees_everything_and_decoding_resumes(engine: LlamaEngine) -> None:
    before = greedy(engine, 0)
    assert engine.n_cached_cells() > 0  # the released slot kept its prefix
    prompt = engine.tokenize(PROMPT, add_special=True, parse_special=True)
    engine.begin(1, prompt, GREEDY)
    engine.step()  # slot 1 is mid-prefill or decoding when the context goes
    engine.reset()
    assert engine.n_cached_cells() == 0 and engine.step() == []
    assert engine.cached_prefix_len(0, prompt) == 0
    # The new context decodes the same greedy tokens, on either slot.
    assert greedy(engine, 1) == before
    assert greedy(engine, 0) == before
