"""Preemption on the bundled SmolLM2: a paused stream's text is the same as an unpaused run's.

One slot, so the request of better priority overwrites the paused sequence's cells and its
state must come back from the engine's own buffer, with the prompt cache off (``--cache-ram 0``)
and on. At temperature 0, and at temperature > 0 with a seed, penalties and a grammar (the RNG,
the penalty history and the grammar's state all live in the sampler that waits with it).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.base import SamplingParams
from server.engine.llama.engine import LlamaEngine
from server.engine.prompt_cache.cache import PromptCacheConfig
from server.runtime.events import FinishEvent, GenerationRequest, NoHooks
from server.runtime.scheduler import RequestHandle, Scheduler
from tests.helpers.streams import collect

pytestmark = pytest.mark.model

PROMPT = (
    "<|im_start|>user\nTell me a long story about a lighthouse keeper and a storm.<|im_end|>\n<|im_start|>assistant\n"
)
INTERRUPTION = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
N_TOKENS = 40
SAMPLERS = {
    "greedy": SamplingParams(temperature=0.0),
    "seeded": SamplingParams(temperature=0.9, top_k=40, seed=1234, repeat_penalty=1.3, frequency_penalty=0.5),
    "grammar": SamplingParams(
        temperature=0.8, seed=7, grammar='root ::= "[" item ("," " " item){15} "]"\nitem ::= [a-z]{2,12}'
    ),
}


class Count(NoHooks):
    def __init__(self) -> None:
        self.preemptions = 0

    def request_preempted(self) -> None:
        self.preemptions += 1


async def generate(handle: RequestHandle, seen: list[int] | None = None) -> str:
    text, final = await collect(handle, seen)
    assert isinstance(final, FinishEvent), f"failed: {final}"
    return text


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
async def test_a_paused_stream_reads_as_an_unpaused_one(smollm2_path: str, sampler: str, cache: bool) -> None:
    config = PromptCacheConfig(ram_bytes=64 * 2**20, min_tokens=16) if cache else None
    engine = LlamaEngine(
        smollm2_path, model_id="smollm2", n_slots=1, n_ctx_per_seq=512, n_batch=64, prompt_cache=config
    )
    hooks = Count()
    s = Scheduler(engine, max_queue=4, hooks=hooks, preempt_after=0.01)
    s.start()
    try:
        params = SAMPLERS[sampler]
        prompt = engine.tokenize(PROMPT, add_special=True, parse_special=True)
        # ignore_eos-like budget: the stream must still be going when the interruption comes
        story = GenerationRequest(prompt, params, N_TOKENS, priority=10)
        unpaused = await generate(s.submit(story))

        seen: list[int] = []
        paused = asyncio.create_task(generate(s.submit(story), seen))
        deadline = time.monotonic() + 60
        while len(seen) < 8:
            assert time.monotonic() < deadline and not paused.done(), "the story stopped before 8 tokens"
            await asyncio.sleep(0.002)
        other = engine.tokenize(INTERRUPTION, add_special=True, parse_special=True)
        await generate(s.submit(GenerationRequest(other, SamplingParams(temperature=0.0), 8, priority=0)))
        assert await paused == unpaused
        assert hooks.preemptions == 1
        assert len(seen) > 8
    finally:
        s.stop()
        engine.close()
