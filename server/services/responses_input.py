"""A Responses request -> what the chat pipeline renders: chat messages, OpenAI function tools.

The conversation becomes the chat-shaped messages :class:`~server.services.chat.ChatService`
renders, so chat, Messages and Responses show a model the same prompt for the same conversation:

- ``instructions`` and every ``system``/``developer`` message become one system prompt, in order
  (rendered in place, mid-conversation system turns break strict templates and tool calling).
- ``function_call`` items become the assistant turn's tool calls (consecutive calls, and the text
  beside them, are one turn); ``function_call_output`` items become ``tool`` messages.
- Consecutive messages of one role merge into one turn.
- A ``reasoning`` item is the next assistant turn's ``reasoning_content`` (templates that show
  earlier thinking read it; the rest drop it).

Every item is also kept in its stored shape (:func:`stored_items`: the spec's ``ItemResource``, with
an id), which is what ``GET /v1/responses/{id}/input_items`` lists and what a follow-up's
``previous_response_id`` continues from. Items of types this server cannot read are a 400 naming them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from server.errors import InvalidRequestError, UnsupportedFieldError
from server.protocol import ChatMessage, FunctionCall, ToolCall
from server.protocol.responses import (
    INCLUDABLE,
    UNSUPPORTED_REASONS,
    UNSUPPORTED_RESPONSE_FIELDS,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputText,
    InputTokensRequest,
    MessageItem,
    OutputText,
    ReasoningInputItem,
    Refusal,
    ResponseCreateRequest,
    UnsupportedItem,
    UnsupportedPart,
)
from server.services.limits import RequestLimits, first_unencodable_string, json_depth_exceeds, refuse_unsupported
from server.services.turns import append_turn

SEPARATOR = "\n\n"
_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])
_FLAT_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
# The prefix an id of each stored item type gets when the client sent none.
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
# Responses ids look like "resp_<hex>"; anything else cannot name a stored response.
MAX_ID_LENGTH = 128

Request = ResponseCreateRequest | InputTokensRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def request_items(req: Request) -> list[InputItem]:
    """``input`` as items: a string is one user message."""
    if req.input is None:
        return []
    if isinstance(req.input, str):
        return [MessageItem(role="user", content=req.input)]
    return list(req.input)


def parse_stored(items: Sequence[Mapping[str, Any]]) -> list[InputItem]:
    """Stored items (written by :func:`stored_items`) back as input items."""
    try:
        return _ITEMS.validate_python(list(items))
    except ValidationError as exc:  # a store written by another version: say so, never a 500
        raise InvalidRequestError(
            "The stored conversation of 'previous_response_id' cannot be read by this server version.",
            param="previous_response_id",
        ) from exc


# ---- checks -------------------------------------------------------------------------------------


def check_request(req: Request, limits: RequestLimits) -> None:
    """The limits and refusals a request meets before anything is rendered or read from the store."""
    fields = {name: getattr(req, name, None) for name in UNSUPPORTED_RESPONSE_FIELDS}
    refuse_unsupported(fields, UNSUPPORTED_RESPONSE_FIELDS, UNSUPPORTED_REASONS)
    items = req.input if isinstance(req.input, list) else []
    if len(items) > limits.max_messages:
        raise InvalidRequestError(
            f"'input' may hold at most {limits.max_messages} items; it has {len(items)}.", param="input"
        )
    for i, item in enumerate(items):
        _check_item(item, f"input[{i}]", limits)
    for i, tool in enumerate(req.tools or []):
        if json_depth_exceeds(tool, limits.max_json_depth + 1):
            raise InvalidRequestError(
                f"The parameters schema of tools[{i}] nests deeper than {limits.max_json_depth} levels.",
                param=f"tools[{i}].parameters",
            )
    fmt = req.text.format if req.text is not None else None
    schema = getattr(fmt, "schema_", None)
    if schema is not None and json_depth_exceeds(schema, limits.max_json_depth):
        raise InvalidRequestError(
            f"'text.format.schema' nests deeper than {limits.max_json_depth} levels.", param="text.format.schema"
        )
    prev = req.previous_response_id
    if prev is not None and len(prev) > MAX_ID_LENGTH:
        raise previous_not_found(prev)
    bad = first_unencodable_string(req.model_dump(by_alias=True, exclude_none=True))
    if bad is not None:
        raise InvalidRequestError(f"'{bad}' holds text that is not valid Unicode (a lone surrogate).", param=bad)
    if req.text is not None and req.text.verbosity not in (None, "medium"):
        raise UnsupportedFieldError("text.verbosity", "has no switch on this server; leave it out or 'medium'")
    reasoning = req.reasoning
    if reasoning is not None and (reasoning.summary or reasoning.generate_summary) not in (None, "auto"):
        raise UnsupportedFieldError("reasoning.summary", "is not supported: this server writes no summaries")
    if isinstance(req, ResponseCreateRequest):
        _check_create(req, limits)


def _check_create(req: ResponseCreateRequest, limits: RequestLimits) -> None:
    if req.max_output_tokens is not None and req.max_output_tokens > limits.max_tokens:
        raise InvalidRequestError(
            f"'max_output_tokens' is too large: {req.max_output_tokens}. This server generates at most "
            f"{limits.max_tokens} tokens per request (and no more than the context leaves after the prompt).",
            param="max_output_tokens",
        )
    for name in req.include or []:
        if name not in INCLUDABLE:
            raise UnsupportedFieldError("include", f"cannot include {name!r} here; only {sorted(INCLUDABLE)}")
    metadata = req.metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequestError(
            "'metadata' holds at most 16 keys of at most 64 characters, each value at most 512.", param="metadata"
        )
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def previous_not_found(response_id: str) -> InvalidRequestError:
    shown = response_id if len(response_id) <= MAX_ID_LENGTH else response_id[:MAX_ID_LENGTH] + "..."
    return InvalidRequestError(
        f"Previous response with id '{shown}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _unsupported_part(part: UnsupportedPart, where: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where}: content parts of type '{part.type}' are not supported: this model reads text only.", param=where
    )


def _check_item(item: InputItem, where: str, limits: RequestLimits) -> None:
    if isinstance(item, UnsupportedItem):
        kind = item.type if isinstance(item.type, str) else repr(item.type)
        raise InvalidRequestError(
            f"{where}: items of type {kind!r} are not supported here: this server reads message, function_call, "
            "function_call_output and reasoning items.",
            param=where,
        )
    content = getattr(item, "content", None) if not isinstance(item, FunctionCallOutputItem) else item.output
    if isinstance(content, list):
        if len(content) > limits.max_messages:
            raise InvalidRequestError(f"{where} holds more than {limits.max_messages} content parts.", param=where)
        field = "output" if isinstance(item, FunctionCallOutputItem) else "content"
        for j, part in enumerate(content):
            if isinstance(part, UnsupportedPart):
                raise _unsupported_part(part, f"{where}.{field}[{j}]")
    if isinstance(item, MessageItem) and item.role != "assistant" and isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, Refusal):
                at = f"{where}.content[{j}]"
                raise InvalidRequestError(f"{at}: a refusal belongs in an assistant message.", param=at)


# ---- items -> chat messages ---------------------------------------------------------------------


def _text(content: str | Sequence[InputText | OutputText | Refusal | UnsupportedPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.refusal if isinstance(p, Refusal) else str(getattr(p, "text", "")) for p in content)


def chat_messages(instructions: str | None, items: Sequence[InputItem]) -> list[ChatMessage]:
    """The conversation as chat messages, the system prompt first."""
    system = [instructions] if instructions else []
    out: list[ChatMessage] = []
    thought: str | None = None  # a reasoning item, for the assistant turn after it
    for item in items:
        if isinstance(item, MessageItem):
            text = _text(item.content)
            if item.role in ("system", "developer"):
                system.append(text)
                continue
            message = ChatMessage(role=item.role, content=text)
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            message = ChatMessage(role="assistant", content="", tool_calls=[call])
        elif isinstance(item, FunctionCallOutputItem):
            message = ChatMessage(role="tool", tool_call_id=item.call_id, content=_text(item.output))
        elif isinstance(item, ReasoningInputItem):
            thought = SEPARATOR.join(p.text for p in (item.content or item.summary)) or None
            continue
        else:  # refused by check_request; a stored item is never one
            continue
        if message.role == "assistant" and thought:
            message.reasoning_content, thought = thought, None
        append_turn(out, message)
    text = SEPARATOR.join(p for p in system if p)
    return [ChatMessage(role="system", content=text), *out] if text else out


# ---- the stored shape ---------------------------------------------------------------------------


def stored_items(items: Sequence[InputItem]) -> list[dict[str, Any]]:
    """Each item as ``ItemResource`` (what input_items lists), with the client's id or a new one."""
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, UnsupportedItem):
            continue
        base: dict[str, Any] = {"id": item.id or new_id(_ID_PREFIX[item.type]), "type": item.type}
        if isinstance(item, MessageItem):
            base |= {"role": item.role, "status": "completed", "content": _parts(item)}
        elif isinstance(item, FunctionCallItem):
            base |= {"call_id": item.call_id, "name": item.name, "arguments": item.arguments, "status": "completed"}
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text(item.output)
            base |= {"call_id": item.call_id, "output": output, "status": "completed"}
        else:
            base["summary"] = [p.model_dump() for p in item.summary]
            if item.content is not None:
                base["content"] = [p.model_dump() for p in item.content]
        out.append(base)
    return out


def _parts(item: MessageItem) -> list[dict[str, Any]]:
    content = [OutputText(type="output_text", text=item.content)] if isinstance(item.content, str) else item.content
    if item.role != "assistant":
        return [{"type": "input_text", "text": _text([p])} for p in content]
    return [
        {"type": "refusal", "refusal": p.refusal}
        if isinstance(p, Refusal)
        else {"type": "output_text", "text": _text([p]), "annotations": [], "logprobs": []}
        for p in content
    ]


# ---- tools --------------------------------------------------------------------------------------


def function_tools(req: Request) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """Responses' flat function tools as chat's nested ones (for the planner), and as echoed back.

    ``strict`` is on unless turned off, as OpenAI's Responses API defaults it. Chat's nested shape is
    accepted too, a common client mistake that says the same thing.
    """
    if req.tools is None:
        return None, []
    nested: list[dict[str, Any]] = []
    echoed: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools):
        where = f"tools[{i}]"
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequestError(
                f"{where}: tools of type {kind!r} are not supported: this server runs no built-in tools. "
                "Declare function tools (type 'function' with a 'name').",
                param=where,
            )
        fn = tool["function"] if isinstance(tool.get("function"), Mapping) else tool
        unknown = sorted(set(fn) - _FLAT_TOOL_KEYS) if fn is tool else sorted(set(tool) - {"type", "function"})
        if unknown:
            raise InvalidRequestError(f"{where}: unknown field {unknown[0]!r}.", param=f"{where}.{unknown[0]}")
        strict = fn.get("strict") is not False
        spec = {
            "name": fn.get("name"),
            "description": fn.get("description"),
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
            "strict": strict,
        }
        nested.append({"type": "function", "function": {k: v for k, v in spec.items() if v is not None}})
        echoed.append({"type": "function", **spec})
    return nested, echoed


Choice = str | dict[str, Any] | None


def tool_choice(req: Request, tools: list[dict[str, Any]] | None) -> tuple[Choice, list[dict[str, Any]] | None]:
    """``tool_choice`` as chat's, and the tools it allows (``allowed_tools`` narrows the list)."""
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice, tools
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str) and set(choice) <= {"type", "name"}:
        return {"type": "function", "function": {"name": choice["name"]}}, tools
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list) and choice.get("mode") in ("auto", "required"):
        names = set()
        for t in choice["tools"]:
            if not isinstance(t, Mapping) or t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise InvalidRequestError(
                    '\'tool_choice.tools\' may list function tools only ({"type": "function", "name": ...}).',
                    param="tool_choice.tools",
                )
            names.add(t["name"])
        allowed = [t for t in tools or [] if t["function"]["name"] in names]
        missing = names - {t["function"]["name"] for t in allowed}
        if missing:
            raise InvalidRequestError(
                f"'tool_choice.tools' names tools not declared in 'tools': {', '.join(sorted(missing))}.",
                param="tool_choice.tools",
            )
        return str(choice["mode"]), allowed
    raise InvalidRequestError(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required', "
        '{"type": "function", "name": ...} or {"type": "allowed_tools", ...}; this server runs no built-in tools.',
        param="tool_choice",
    )
