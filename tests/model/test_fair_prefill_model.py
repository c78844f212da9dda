"""Fair prefill on the real llama.cpp engine: a short prompt is not made to wait for a long one's prefill."""

from __future__ import annotations

import pytest

from server.engine.base import SamplingParams
from server.engine.llama.engine import LlamaEngine

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)


def first_tokens(engine: LlamaEngine) -> tuple[int, int, int]:
    """Begin a ~400-token prompt, then after one step a short one; the steps to each first token.

    Returns (steps until the short prompt's first token, counted from its begin; the step of the
    long prompt's first token; the step of the short prompt's).
    """
    long_prompt = engine.tokenize("the lighthouse keeper " * 120, add_special=True, parse_special=False)
    short_prompt = engine.tokenize("Hi", add_special=True, parse_special=False)
    assert len(long_prompt) > 10 * engine.info.n_batch
    engine.begin(0, long_prompt, GREEDY)
    step = 1
    assert engine.step() == []  # still prefilling
    engine.begin(1, short_prompt, GREEDY)
    seen: dict[int, int] = {}
    while len(seen) < 2:
        step += 1
        for out in engine.step():
            seen.setdefault(out.slot, step)
        assert step < 100
    return seen[1] - 1, seen[0], seen[1]


@pytest.mark.parametrize("fair", [True, False])
def test_a_short_prompt_during_a_long_prefill_gets_its_first_token_within_a_step_or_two(
    smollm2_path: str, fair: bool
) -> None:
    engine = LlamaEngine(smollm2_path, model_id="smollm2", n_slots=2, n_ctx_per_seq=512, n_batch=32,
                         fair_prefill=fair)  # fmt: skip
    try:
        wait, long_step, short_step = first_tokens(engine)
    finally:
        engine.close()
    if fair:
        assert wait <= 2
        assert short_step < long_step
    else:
        # First come, first served: the short prompt waits for all of the long one.
        assert short_step >= long_step
