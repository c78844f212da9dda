"""Request limits: what one request may ask for before it costs the server anything.

The service calls :func:`check_chat_request` (or :func:`check_sampling_fields`
for legacy completions) before it renders a prompt or queues anything. Each
refusal is an :class:`~server.errors.InvalidRequestError` (400) naming the
field, so a client sees exactly which limit it passed. Every number is a
setting (``--max-messages`` and friends); the body size limit lives in
:mod:`server.api.security` because it must hold before the body is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidRequestError, UnsupportedFieldError
from server.prompting.chat_template import RESERVED_VARIABLES
from server.protocol import ChatCompletionRequest, SamplingFields
from server.settings import Settings


@dataclass(frozen=True)
class RequestLimits:
    max_messages: int = 2048
    max_n: int = 16
    max_stop: int = 4
    max_stop_length: int = 256
    max_tokens: int = 2**20
    max_logit_bias: int = 1024
    max_json_depth: int = 32
    max_grammar_bytes: int = 64 * 2**10

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_messages=settings.max_messages,
            max_n=settings.max_n,
            max_stop=settings.max_stop,
            max_stop_length=settings.max_stop_length,
            max_tokens=settings.max_tokens_limit,
            max_logit_bias=settings.max_logit_bias,
            max_json_depth=settings.max_json_depth,
            max_grammar_bytes=settings.max_grammar_bytes,
        )


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests objects/arrays deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def first_unencodable_string(value: Any, path: str = "") -> str | None:
    """The path of the first string that is not valid Unicode (a lone surrogate from a JSON ``\\ud800``).

    JSON allows such escapes, but no tokenizer can encode them: left alone they fail deep in the
    engine as a 500.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def check_sampling_fields(req: SamplingFields, limits: RequestLimits) -> None:
    """The limits chat and legacy completions share."""
    if req.n is not None and req.n > limits.max_n:
        raise InvalidRequestError(f"'n' may be at most {limits.max_n} on this server.", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name, None)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequestError(
                f"'{name}' is too large: {value}. This server generates at most {limits.max_tokens} tokens "
                "per request (and no more than the context leaves after the prompt).",
                param=name,
            )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop:
        raise InvalidRequestError(f"'stop' takes at most {limits.max_stop} sequences.", param="stop")
    for i, s in enumerate(stop):
        if len(s) > limits.max_stop_length:
            raise InvalidRequestError(
                f"Each stop sequence may be at most {limits.max_stop_length} characters; stop[{i}] has {len(s)}.",
                param="stop",
            )
    if req.logit_bias is not None and len(req.logit_bias) > limits.max_logit_bias:
        raise InvalidRequestError(
            f"'logit_bias' may hold at most {limits.max_logit_bias} entries; it has {len(req.logit_bias)}.",
            param="logit_bias",
        )
    if req.grammar is not None and len(req.grammar.encode("utf-8", errors="replace")) > limits.max_grammar_bytes:
        raise InvalidRequestError(f"'grammar' may be at most {limits.max_grammar_bytes} bytes.", param="grammar")


def refuse_unsupported(
    values: Mapping[str, Any],
    table: Mapping[str, Callable[[Any], bool]],
    reasons: Mapping[str, str] | None = None,
) -> None:
    """A 400 naming the first OpenAI field we do not implement that holds a value we cannot honour."""
    for name, acceptable in table.items():
        value = values.get(name)
        if value is not None and not acceptable(value):
            raise UnsupportedFieldError(name, *([reasons[name]] if reasons and name in reasons else []))


def check_generation_fields(req: SamplingFields, limits: RequestLimits) -> None:
    """What chat and legacy completions both check before anything is rendered or queued."""
    check_sampling_fields(req, limits)
    bad = first_unencodable_string(req.model_dump(by_alias=True, exclude_none=True))
    if bad is not None:
        raise InvalidRequestError(f"'{bad}' holds text that is not valid Unicode (a lone surrogate).", param=bad)
    depth = limits.max_json_depth
    if req.json_schema is not None and json_depth_exceeds(req.json_schema, depth):
        raise InvalidRequestError(f"'json_schema' nests deeper than {depth} levels.", param="json_schema")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


# chat_template_kwargs: variables for someone else's template code, so few, named plainly, and small.
MAX_TEMPLATE_KWARGS = 32
MAX_TEMPLATE_KWARG_CHARS = 4096
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_template_kwargs(kwargs: Mapping[str, object] | None) -> None:
    """``chat_template_kwargs`` within bounds; the protocol already holds each value to a simple type."""
    if not kwargs:
        return
    if len(kwargs) > MAX_TEMPLATE_KWARGS:
        raise InvalidRequestError(
            f"'chat_template_kwargs' may hold at most {MAX_TEMPLATE_KWARGS} variables.", param="chat_template_kwargs"
        )
    for name, value in kwargs.items():
        where = f"chat_template_kwargs.{name}"
        if not _VARIABLE_NAME.fullmatch(name):
            raise InvalidRequestError(f"'{name}' is not a template variable name.", param="chat_template_kwargs")
        if name in RESERVED_VARIABLES:
            raise InvalidRequestError(f"'{name}' is set by the server and cannot be passed here.", param=where)
        if isinstance(value, str) and len(value) > MAX_TEMPLATE_KWARG_CHARS:
            raise InvalidRequestError(f"'{where}' is longer than {MAX_TEMPLATE_KWARG_CHARS} characters.", param=where)


def check_message_count(n_messages: int, limits: RequestLimits) -> None:
    """The one bound on a conversation's length, chat's and Messages' alike."""
    if n_messages > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' may hold at most {limits.max_messages} messages; it has {n_messages}.", param="messages"
        )


def check_chat_request(req: ChatCompletionRequest, limits: RequestLimits) -> None:
    """Raise a 400 naming the first field over a limit; return quietly otherwise."""
    check_message_count(len(req.messages), limits)
    check_generation_fields(req, limits)
    check_template_kwargs(req.chat_template_kwargs)
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    depth = limits.max_json_depth
    response_format = req.response_format.model_dump(by_alias=True) if req.response_format is not None else None
    if response_format is not None and json_depth_exceeds(response_format, depth + 2):
        # +2: the schema itself sits at response_format.json_schema.schema.
        raise InvalidRequestError(f"'response_format' nests deeper than {depth} levels.", param="response_format")
    for i, tool in enumerate(req.tools or []):
        if json_depth_exceeds(tool, depth + 2):  # tools[i].function.parameters
            raise InvalidRequestError(
                f"The parameters schema of tools[{i}] nests deeper than {depth} levels.",
                param=f"tools[{i}].function.parameters",
            )
    if isinstance(req.tool_choice, dict) and json_depth_exceeds(req.tool_choice, depth):
        raise InvalidRequestError(f"'tool_choice' nests deeper than {depth} levels.", param="tool_choice")
