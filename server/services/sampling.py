"""OpenAI sampling fields -> per-choice :class:`~server.engine.base.SamplingParams`, stop strings, budgets.

Pure functions of the request and the model's facts (:class:`~server.engine.base.ModelInfo`):
nothing here touches the engine, so they run anywhere, a worker thread included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from server.engine.base import ModelInfo, SamplingParams
from server.errors import ContextLengthExceededError, InvalidRequestError
from server.prompting.grammar import InvalidSchemaError, json_schema_to_gbnf
from server.protocol import SamplingFields

# llama.cpp's defaults for the samplers OpenAI does not have; they keep small models coherent
# at OpenAI's default temperature of 1.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


def outside_vocabulary(tokens: Iterable[int], n_vocab: int) -> list[int]:
    """The token ids that are not in ``0..n_vocab-1`` (the one vocabulary check every input shares)."""
    return [t for t in tokens if not 0 <= t < n_vocab]


def check_token_ids(tokens: Sequence[int], n_vocab: int, *, param: str, what: str) -> None:
    bad = outside_vocabulary(tokens, n_vocab)
    if bad:
        raise InvalidRequestError(
            f"{what} holds token ids outside the vocabulary (0..{n_vocab - 1}): {bad[:5]}.", param=param
        )


def logit_bias(req: SamplingFields, n_vocab: int) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(f"logit_bias key '{key}' is not a token id.", param="logit_bias") from None
        bias[token] = value
    check_token_ids(list(bias), n_vocab, param="logit_bias", what="'logit_bias'")
    return bias


def stop_strings(req: SamplingFields) -> list[str]:
    """The request's stop strings (their count and length were checked with the limits)."""
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return [s for s in stop if s]


def token_budget(prompt_len: int, requested: int | None, n_ctx: int, *, param: str) -> int:
    """Tokens a choice may generate: what was asked for, capped by the room left in the context."""
    if prompt_len >= n_ctx:
        raise ContextLengthExceededError(prompt_len + (requested or 1), n_ctx, param=param, prompt_tokens=prompt_len)
    room = n_ctx - prompt_len
    return room if requested is None else min(requested, room)


def choice_params(
    req: SamplingFields,
    info: ModelInfo,
    n: int,
    *,
    top_logprobs: int | None,
    grammar: str | None,
) -> list[SamplingParams]:
    """The sampling settings of each of ``n`` choices: the same but for the seed (choice i: seed + i)."""
    if req.ignore_eos and grammar is not None:
        # A grammar that is complete allows only end-of-generation: banning it leaves nothing.
        raise InvalidRequestError(
            "'ignore_eos' cannot be combined with a grammar, a JSON response_format or a forced tool call.",
            param="ignore_eos",
        )
    bias: Mapping[int, float] = logit_bias(req, info.n_vocab)
    if req.ignore_eos:
        bias = {**bias, **dict.fromkeys(info.eog_tokens, float("-inf"))}
    return [
        SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=DEFAULT_TOP_K if req.top_k is None else req.top_k,
            min_p=DEFAULT_MIN_P if req.min_p is None else req.min_p,
            # Reproducible, yet the n choices differ.
            seed=None if req.seed is None else (req.seed + i) & 0xFFFFFFFF,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
            logit_bias=bias,
            grammar=grammar,
            top_logprobs=top_logprobs,
        )
        for i in range(n)
    ]


def schema_grammar(schema: dict[str, Any], *, strict: bool, param: str) -> str:
    """The GBNF holding output to ``schema``; a schema it cannot hold is a 400 naming ``param``."""
    try:
        return json_schema_to_gbnf(schema, strict=strict)
    except InvalidSchemaError as exc:
        exc.param = param
        raise


def request_grammar(req: SamplingFields) -> tuple[str | None, str | None]:
    """The grammar our extensions ask for (``grammar`` GBNF or llama-server's top-level ``json_schema``),
    and the name of the field that gave it (errors compiling it name that field)."""
    if req.grammar is not None and req.json_schema is not None:
        raise InvalidRequestError("Give either 'grammar' or 'json_schema', not both.", param="json_schema")
    if req.json_schema is not None:
        return schema_grammar(req.json_schema, strict=False, param="json_schema"), "json_schema"
    return req.grammar, "grammar" if req.grammar is not None else None
