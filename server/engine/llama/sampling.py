"""llama.cpp sampler chains and log-probabilities for :mod:`server.engine.llama.engine`.

Each sequence gets its own chain built from its :class:`SamplingParams`, so seeds,
penalties and grammars never leak between concurrent requests.
"""

from __future__ import annotations

import secrets
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from server.engine.base import InvalidGrammarError, SamplingParams, StepOutput, TokenLogprob, TokenOutOfRangeError


def make_sampler(p: SamplingParams, *, vocab: Any, n_vocab: int, n_ctx_seq: int) -> Any:
    """A new sampler chain for one sequence; the caller frees it with ``llama_sampler_free``."""
    cparams = llama_cpp.llama_sampler_chain_default_params()
    cparams.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(cparams)
    try:
        _fill_chain(chain, p, vocab=vocab, n_vocab=n_vocab, n_ctx_seq=n_ctx_seq)
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain


def _fill_chain(chain: Any, p: SamplingParams, *, vocab: Any, n_vocab: int, n_ctx_seq: int) -> None:
    add = llama_cpp.llama_sampler_chain_add
    if p.logit_bias:
        items = list(p.logit_bias.items())
        if any(not 0 <= int(t) < n_vocab for t, _ in items):
            raise TokenOutOfRangeError("logit_bias names a token outside the vocabulary")
        arr = (llama_cpp.llama_logit_bias * len(items))(
            *(llama_cpp.llama_logit_bias(int(t), float(b)) for t, b in items)
        )
        # llama.cpp copies the array, so ``arr`` may go when this returns.
        add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(items), arr))
    if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
        last_n = n_ctx_seq if p.penalty_last_n < 0 else p.penalty_last_n
        if last_n > 0:
            # Penalties see generated tokens only (OpenAI's reading), not the prompt.
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                ),
            )
    if p.grammar is not None and p.grammar.strip():
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, p.grammar.encode(), b"root")
        if not grammar:
            raise InvalidGrammarError("the grammar does not parse as GBNF with a 'root' rule")
        add(chain, grammar)
    if p.temperature <= 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return
    if p.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
    if p.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0.0:
        add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
    seed = secrets.randbits(32) if p.seed is None else p.seed & 0xFFFFFFFF
    add(chain, llama_cpp.llama_sampler_init_dist(seed))


def with_logprobs(ctx: Any, n_vocab: int, slot: int, token: int, index: int, k: int) -> StepOutput:
    """The sampled token with its log-probability and the ``k`` most likely alternatives."""
    # Log-softmax of the raw logits: what the model believes before any bias,
    # penalty or grammar, as OpenAI reports it.
    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    logits: npt.NDArray[np.float32] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
    shifted = logits.astype(np.float64) - float(logits.max())
    logprobs = shifted - np.log(np.exp(shifted).sum())
    top: tuple[TokenLogprob, ...] = ()
    if k > 0:
        k = min(k, n_vocab)
        idx = np.argpartition(logprobs, -k)[-k:]
        idx = idx[np.argsort(logprobs[idx])[::-1]]
        top = tuple(TokenLogprob(token=int(t), logprob=float(logprobs[t])) for t in idx)
    return StepOutput(slot=slot, token=token, logprob=float(logprobs[token]), top_logprobs=top)
