"""How OpenAI sampling fields become per-choice SamplingParams, stop strings and token budgets."""

from __future__ import annotations

import pytest

from server.engine.fake import EOS, FakeEngine
from server.errors import ContextLengthExceededError, InvalidRequestError
from server.protocol import ChatCompletionRequest
from server.services.sampling import check_token_ids, choice_params, logit_bias, stop_strings, token_budget

INFO = FakeEngine(n_ctx_per_seq=100).info


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **fields})


def test_each_choice_gets_seed_plus_its_index() -> None:
    params = choice_params(request(seed=41, n=3), INFO, 3, top_logprobs=None, grammar=None)
    assert [p.seed for p in params] == [41, 42, 43]
    assert choice_params(request(), INFO, 2, top_logprobs=None, grammar=None)[1].seed is None


def test_openai_defaults_and_llama_cpp_defaults_for_our_extensions() -> None:
    # The documented defaults (README "Sampling"): OpenAI's temperature 1 and top_p 1, llama.cpp's
    # top_k 40 and min_p 0.05.
    p = choice_params(request(), INFO, 1, top_logprobs=None, grammar=None)[0]
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 40, 0.05)
    p = choice_params(
        request(temperature=0, top_k=0, min_p=0, repeat_penalty=1.3, presence_penalty=0.5, logit_bias={"7": -100}),
        INFO,
        1,
        top_logprobs=3,
        grammar="root ::= x",
    )[0]
    assert (p.temperature, p.top_k, p.min_p, p.repeat_penalty, p.presence_penalty) == (0, 0, 0, 1.3, 0.5)
    assert dict(p.logit_bias) == {7: -100} and p.top_logprobs == 3 and p.grammar == "root ::= x"


def test_ignore_eos_bans_every_end_of_generation_token_of_the_model() -> None:
    p = choice_params(request(ignore_eos=True, logit_bias={"7": 5}), INFO, 1, top_logprobs=None, grammar=None)[0]
    assert dict(p.logit_bias) == {7: 5, EOS: float("-inf")}
    with pytest.raises(InvalidRequestError) as err:
        choice_params(request(ignore_eos=True), INFO, 1, top_logprobs=None, grammar="root ::= x")
    assert err.value.param == "ignore_eos"


def test_logit_bias_keys_must_be_token_ids_of_the_vocabulary() -> None:
    with pytest.raises(InvalidRequestError, match="not a token id"):
        logit_bias(request(logit_bias={"cat": 1}), INFO.n_vocab)
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \(0\.\.257\): \[258\]") as err:
        logit_bias(request(logit_bias={"258": 1}), INFO.n_vocab)
    assert err.value.param == "logit_bias"


def test_the_vocabulary_check_names_the_first_bad_ids() -> None:
    check_token_ids([0, 257], 258, param="prompt", what="Prompt 0")
    with pytest.raises(InvalidRequestError, match=r"Prompt 0 holds token ids .*\[-1, 300\]"):
        check_token_ids([5, -1, 300], 258, param="prompt", what="Prompt 0")


def test_token_budget_caps_by_room_and_refuses_a_full_prompt() -> None:
    assert token_budget(40, None, 100, param="messages") == 60
    assert token_budget(40, 10, 100, param="messages") == 10
    assert token_budget(40, 1000, 100, param="messages") == 60
    with pytest.raises(ContextLengthExceededError) as err:
        token_budget(100, 20, 100, param="messages")
    assert err.value.limit == 100 and err.value.requested == 120
    assert "100 in the messages, 20 in the completion" in err.value.message


def test_stop_strings_drop_empty_ones() -> None:
    assert stop_strings(request(stop="x")) == ["x"]
    assert stop_strings(request(stop=["a", ""])) == ["a"]
