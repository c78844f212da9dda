"""How OpenAI sampling fields become per-choice SamplingParams and token budgets."""

from __future__ import annotations

import pytest

from server.engine.fake import FakeEngine
from server.errors import ContextLengthExceededError, InvalidRequestError
from server.protocol import ChatCompletionRequest
from server.runtime.scheduler import Scheduler
from server.services.pipeline import GenerationService


@pytest.fixture
def service() -> GenerationService:
    engine = FakeEngine(n_ctx_per_seq=100)
    return GenerationService(engine, Scheduler(engine), model_id="m", fingerprint="fp", created=0)


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **fields})


def test_each_choice_gets_seed_plus_its_index(service: GenerationService) -> None:
    reqs = service.generation_requests(
        request(seed=41, n=3), [1, 2, 3], request_id="r", max_tokens=5, n=3, top_logprobs=None, grammar=None
    )
    assert [r.params.seed for r in reqs] == [41, 42, 43]
    unseeded = service.sampling_params(request(), 2, top_logprobs=None, grammar=None)
    assert unseeded.seed is None


def test_openai_defaults_and_our_extensions(service: GenerationService) -> None:
    p = service.sampling_params(request(), 0, top_logprobs=None, grammar=None)
    # OpenAI's temperature and top_p, and the top_k / min_p defaults the README documents.
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 40, 0.05)
    p = service.sampling_params(
        request(temperature=0, top_k=0, min_p=0, repeat_penalty=1.3, presence_penalty=0.5, logit_bias={"7": -100}),
        0,
        top_logprobs=3,
        grammar="root ::= x",
    )
    assert (p.temperature, p.top_k, p.min_p, p.repeat_penalty, p.presence_penalty) == (0, 0, 0, 1.3, 0.5)
    assert dict(p.logit_bias) == {7: -100} and p.top_logprobs == 3 and p.grammar == "root ::= x"


def test_token_budget_caps_by_room_and_refuses_a_full_prompt(service: GenerationService) -> None:
    assert service.token_budget(40, None, param="messages") == 60
    assert service.token_budget(40, 10, param="messages") == 10
    assert service.token_budget(40, 1000, param="messages") == 60
    with pytest.raises(ContextLengthExceededError) as err:
        service.token_budget(100, 20, param="messages")
    assert err.value.limit == 100 and err.value.requested == 120
    assert "100 in the messages, 20 in the completion" in err.value.message


def test_stop_strings_at_most_four(service: GenerationService) -> None:
    assert service.stop_strings(request(stop="x")) == ["x"]
    assert service.stop_strings(request(stop=["a", ""])) == ["a"]
    with pytest.raises(InvalidRequestError):
        service.stop_strings(request().model_copy(update={"stop": list("abcde")}))
