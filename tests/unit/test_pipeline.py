"""The generation pipeline chat and completions share: submit all-or-none, events, usage, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.engine.base import (
    DecodeError,
    EngineError,
    FinishReason,
    InvalidGrammarError,
    PromptTooLongError,
    SamplingParams,
    TokenOutOfRangeError,
)
from server.engine.fake import FakeEngine
from server.errors import (
    ContextLengthExceededError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from server.protocol import CompletionRequest
from server.runtime.events import FinishEvent, GenerationRequest
from server.runtime.scheduler import Scheduler
from server.services.pipeline import Pipeline, PreparedGeneration, api_error


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    engine = FakeEngine(reply=lambda p: "hey", n_slots=2, n_ctx_per_seq=64)
    scheduler = Scheduler(engine, max_queue=4)
    scheduler.start()
    yield Pipeline(engine, scheduler, model_id="m")
    scheduler.stop()


def prepared(pipeline: Pipeline, prompts: list[list[int]], n: int, **fields: object) -> PreparedGeneration:
    req = CompletionRequest.model_validate({"prompt": "x", **fields})
    return pipeline.prepare(
        req, prompts, request_id="r", max_tokens=None, prompt_param="prompt", n=n, top_logprobs=None, grammar=None
    )


async def test_choices_are_numbered_prompt_by_prompt_and_events_are_tagged(pipeline: Pipeline) -> None:
    p = prepared(pipeline, [[1, 2], [3, 4, 5]], 2, temperature=0)
    assert p.n_choices == 4 and [len(r.prompt_tokens) for r in p.requests] == [2, 2, 3, 3]
    text: dict[int, str] = {i: "" for i in range(4)}
    finishes: list[FinishEvent | None] = [None] * 4
    async for i, ev in pipeline.events(p, pipeline.submit(p)):
        text[i] += ev.text
        if isinstance(ev, FinishEvent):
            finishes[i] = ev
    assert set(text.values()) == {"hey"}
    usage = pipeline.usage(p, finishes)
    # Each prompt counts once, however many choices it has.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 12, 17)


async def test_one_choice_streams_without_a_merge(pipeline: Pipeline) -> None:
    p = prepared(pipeline, [[1, 2, 3]], 1)
    events = [ev async for _, ev in pipeline.events(p, pipeline.submit(p))]
    assert "".join(e.text for e in events) == "hey" and isinstance(events[-1], FinishEvent)


async def test_a_refusal_part_way_submits_nothing(pipeline: Pipeline) -> None:
    # Two slots and a queue of four take six sequences; the seventh is refused, and the six
    # already accepted are cancelled with it rather than left to run for nobody.
    with pytest.raises(QueueFullError):
        pipeline.submit(prepared(pipeline, [[1]], 7))
    for _ in range(200):
        if pipeline.scheduler.waiting == 0 and pipeline.scheduler.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert pipeline.scheduler.waiting == 0 and pipeline.scheduler.busy == 0
    follow = prepared(pipeline, [[1]], 6)
    events = [ev async for _, ev in pipeline.events(follow, pipeline.submit(follow))]
    assert sum(isinstance(e, FinishEvent) for e in events) == 6


def test_a_choice_with_nothing_to_generate_reports_length() -> None:
    assert Pipeline.finish_reason(FinishReason.STOP) == "stop"
    assert Pipeline.finish_reason(FinishReason.LENGTH) == "length"
    assert Pipeline.finish_reason(None) == "length"


@pytest.mark.parametrize(
    ("error", "kind", "param"),
    [
        (InvalidGrammarError("x"), InvalidRequestError, "tools"),
        (PromptTooLongError(70, 64), ContextLengthExceededError, "messages"),
        (TokenOutOfRangeError("x"), InvalidRequestError, None),
        (DecodeError("x", code=1, slots=(0,)), GenerationError, None),
        (EngineError("the engine loop failed"), GenerationError, None),
        (RequestTimeoutError(3), RequestTimeoutError, None),
    ],
)
def test_engine_errors_map_to_the_api_error_tree(error: Exception, kind: type[Exception], param: str | None) -> None:
    mapped = api_error(error, grammar_param="tools")
    assert type(mapped) is kind and mapped.param == param
    if isinstance(error, RequestTimeoutError):
        assert mapped is error  # the scheduler's own refusals pass through untouched


def test_generation_requests_carry_the_checked_budget(pipeline: Pipeline) -> None:
    p = prepared(pipeline, [[1] * 60], 1, max_tokens=100)
    assert p.requests == [GenerationRequest([1] * 60, p.requests[0].params, 4, [], "r")]
    assert isinstance(p.requests[0].params, SamplingParams)
