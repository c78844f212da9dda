"""The llama.cpp engine on the bundled SmolLM2-135M: decoding, batching, samplers, cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import llama_cpp
import pytest

from server.engine.base import (
    DecodeError,
    EngineError,
    InvalidGrammarError,
    PromptTooLongError,
    SamplingParams,
    SlotBusyError,
    StepOutput,
)
from server.engine.llama.engine import LlamaEngine

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)
CHATML_FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def engine(llama_engine: LlamaEngine) -> Iterator[LlamaEngine]:
    """The module's engine, with every slot released and its cache dropped afterwards."""
    yield llama_engine
    for slot in range(llama_engine.info.n_slots):
        llama_engine.release(slot, keep_cache=False)


def prompt_of(engine: LlamaEngine, text: str = CHATML_FRANCE) -> list[int]:
    return engine.tokenize(text, add_special=True, parse_special=True)


def run(engine: LlamaEngine, slots: dict[int, SamplingParams], prompt: list[int], n: int) -> dict[int, list[int]]:
    """Start ``prompt`` on every slot, step until each has ``n`` tokens or ended; release (cache kept)."""
    for slot, params in slots.items():
        engine.begin(slot, prompt, params)
    out: dict[int, list[int]] = {slot: [] for slot in slots}
    running = set(slots)
    while running:
        for o in engine.step():
            if o.slot not in running:
                continue
            out[o.slot].append(o.token)
            if o.token in engine.info.eog_tokens or len(out[o.slot]) >= n:
                engine.release(o.slot)
                running.discard(o.slot)
    return out


def text_of(engine: LlamaEngine, tokens: list[int]) -> str:
    return b"".join(engine.token_bytes(t) for t in tokens).decode("utf-8", "replace")


def test_info_describes_the_model(engine: LlamaEngine) -> None:
    info = engine.info
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.n_ctx_train == 8192
    assert info.n_vocab == 49152
    assert info.n_ctx_per_seq == 512
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.kv_cache_bytes > 0
    assert info.metadata["general.architecture"] == "llama"


def test_greedy_answers_the_capital_of_france(engine: LlamaEngine) -> None:
    tokens = run(engine, {0: GREEDY}, prompt_of(engine), 16)[0]
    assert "Paris" in text_of(engine, tokens)


def test_end_of_generation_renders_as_nothing(engine: LlamaEngine) -> None:
    im_end = engine.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert len(im_end) == 1
    assert im_end[0] in engine.info.eog_tokens
    assert engine.token_bytes(im_end[0]) == b""
    assert engine.token_bytes(im_end[0], special=True) == b"<|im_end|>"
    assert engine.token_bytes(engine.tokenize("Paris", add_special=False, parse_special=False)[0]) == b"Paris"


def test_same_seed_gives_same_tokens_alone_and_in_four_concurrent_slots(engine: LlamaEngine) -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    prompt = prompt_of(engine)
    first = run(engine, {0: params}, prompt, 12)[0]
    engine.release(0, keep_cache=False)
    again = run(engine, {0: params}, prompt, 12)[0]
    assert again == first
    for slot in range(4):
        engine.release(slot, keep_cache=False)
    together = run(engine, dict.fromkeys(range(4), params), prompt, 12)
    assert all(tokens == first for tokens in together.values())


def test_different_seeds_diverge(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine, "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n")
    outs = run(engine, {s: SamplingParams(temperature=1.5, seed=s) for s in range(4)}, prompt, 12)
    assert len({tuple(t) for t in outs.values()}) > 1


def test_prefix_reuse_skips_the_cached_prompt_and_keeps_the_output(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine)
    fresh = run(engine, {0: GREEDY}, prompt, 10)[0]
    assert engine.cached_prefix_len(0, prompt) == len(prompt) - 1  # the last token is decoded again
    assert engine.begin(0, prompt, GREEDY) == len(prompt) - 1
    engine.release(0)
    reused = run(engine, {0: GREEDY}, prompt, 10)[0]
    assert reused == fresh


def test_a_slot_borrows_a_prefix_cached_by_another(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine)
    fresh = run(engine, {0: GREEDY}, prompt, 10)[0]
    assert engine.cached_prefix_len(1, prompt) == 0
    reused = engine.begin(1, prompt, GREEDY)
    assert reused == len(prompt) - 1
    engine.release(1)
    assert run(engine, {1: GREEDY}, prompt, 10)[1] == fresh


def test_a_different_prompt_reuses_only_the_common_prefix(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine)
    run(engine, {0: GREEDY}, prompt, 4)
    other = prompt_of(engine, "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n")
    common = next(i for i, (a, b) in enumerate(zip(prompt, other, strict=False)) if a != b)
    assert engine.begin(0, other, GREEDY) == common
    tokens: list[int] = []
    while len(tokens) < 8:
        tokens += [o.token for o in engine.step()]
    assert "Rome" in text_of(engine, tokens)


def test_release_without_cache_frees_the_cells(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine)
    run(engine, {0: GREEDY, 1: GREEDY}, prompt, 4)
    both = engine.n_cached_cells()
    assert both >= 2 * len(prompt)
    engine.release(0, keep_cache=False)
    assert engine.n_cached_cells() == both // 2
    assert engine.cached_prefix_len(0, prompt) == 0
    engine.release(1, keep_cache=False)
    assert engine.n_cached_cells() == 0


def test_grammar_constrains_the_answer(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine, "<|im_start|>user\nIs the sky green?<|im_end|>\n<|im_start|>assistant\n")
    params = SamplingParams(temperature=1.0, seed=7, grammar='root ::= "yes" | "no"')
    tokens = run(engine, {0: params}, prompt, 8)[0]
    assert tokens[-1] in engine.info.eog_tokens
    assert text_of(engine, tokens) in {"yes", "no"}


def test_invalid_grammar_raises_its_typed_error_and_leaves_the_slot_free(engine: LlamaEngine) -> None:
    prompt = prompt_of(engine)
    with pytest.raises(InvalidGrammarError):
        engine.begin(0, prompt, SamplingParams(grammar="root ::= ( unclosed"))
    with pytest.raises(InvalidGrammarError):
        engine.begin(0, prompt, SamplingParams(grammar='root ::= missing-rule "x"'))
    assert engine.step() == []  # nothing was started
    assert "Paris" in text_of(engine, run(engine, {0: GREEDY}, prompt, 16)[0])


def test_logit_bias_forces_a_token(engine: LlamaEngine) -> None:
    forced = engine.tokenize(" banana", add_special=False, parse_special=False)[0]
    params = SamplingParams(temperature=0.0, logit_bias={forced: 100.0})
    tokens = run(engine, {0: params}, prompt_of(engine), 3)[0]
    assert tokens == [forced] * 3


def test_logprobs_top_one_is_the_greedy_token(engine: LlamaEngine) -> None:
    params = SamplingParams(temperature=0.0, top_logprobs=5)
    engine.begin(0, prompt_of(engine), params)
    outs: list[StepOutput] = []
    while len(outs) < 4:
        outs += engine.step()
    for o in outs:
        assert o.logprob is not None and o.logprob <= 0.0
        assert len(o.top_logprobs) == 5
        assert o.top_logprobs[0].token == o.token
        assert o.top_logprobs[0].logprob == pytest.approx(o.logprob)
        values = [t.logprob for t in o.top_logprobs]
        assert values == sorted(values, reverse=True)
    engine.release(0)
    engine.begin(1, prompt_of(engine), GREEDY)
    (plain,) = engine.step()
    assert plain.token == outs[0].token
    assert plain.logprob is None and plain.top_logprobs == ()


def test_generating_slots_advance_every_step_while_a_long_prompt_prefills(
    engine: LlamaEngine,
) -> None:
    engine.begin(0, prompt_of(engine), GREEDY)
    while not engine.step():
        pass
    long_prompt = prompt_of(engine, "<|im_start|>user\n" + "Tell me about ships. " * 80 + "<|im_end|>\n")
    assert len(long_prompt) > 2 * engine.info.n_batch  # needs several chunks
    engine.begin(1, long_prompt, GREEDY)
    steps = 0
    while True:
        outs = engine.step()
        steps += 1
        assert 0 in {o.slot for o in outs}  # the stream never waits for the prefill
        if 1 in {o.slot for o in outs}:
            break
    assert steps >= 3  # one per chunk


def test_a_full_slot_stops_being_scheduled(smollm2_path: str) -> None:
    small = LlamaEngine(smollm2_path, model_id="small", n_slots=1, n_ctx_per_seq=24)
    try:
        prompt = prompt_of(small)
        small.begin(0, prompt, GREEDY)
        produced = 0
        while step := small.step():
            produced += len(step)
        assert small.slot_is_full(0)
        # Every cell holds a token and the last sampled one could not be fed back.
        assert produced == 24 - len(prompt) + 1
        assert small.step() == []
        with pytest.raises(SlotBusyError):
            small.begin(0, prompt, GREEDY)  # still holding the full sequence
        small.release(0)
        with pytest.raises(PromptTooLongError):
            small.begin(0, list(range(25)), GREEDY)
    finally:
        small.close()


def test_a_failed_decode_raises_and_the_engine_goes_on(engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = prompt_of(engine)
    expected = run(engine, {0: GREEDY}, prompt, 8)[0]
    engine.release(0, keep_cache=False)

    engine.begin(0, prompt, GREEDY)
    tokens = [o.token for o in engine.step()]
    cells = engine.n_cached_cells()
    real_decode = llama_cpp.llama_decode

    def decode_then_fail(ctx: object, batch: object) -> int:
        real_decode(ctx, batch)  # the worst case: the batch did land in the cache
        return -3

    monkeypatch.setattr(llama_cpp, "llama_decode", decode_then_fail)
    with pytest.raises(EngineError) as failure:
        engine.step()
    assert isinstance(failure.value, DecodeError) and failure.value.slots == (0,)
    assert engine.n_cached_cells() == cells
    monkeypatch.setattr(llama_cpp, "llama_decode", real_decode)
    while len(tokens) < 8:
        tokens += [o.token for o in engine.step()]
    assert tokens == expected


def test_llama_cpp_log_goes_to_its_named_logger_at_debug(smollm2_path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="server.engine.llama.cpp")
    LlamaEngine(smollm2_path, model_id="smollm2", n_slots=1, n_ctx_per_seq=64, n_batch=32).close()
    from_cpp = [r for r in caplog.records if r.name == "server.engine.llama.cpp"]
    assert from_cpp and {r.levelno for r in from_cpp} == {logging.DEBUG}
