"""An Anthropic Messages request -> what the chat pipeline renders: chat messages, OpenAI tool dicts.

The conversation becomes the chat-shaped messages :class:`~server.services.chat.ChatService`
renders, so both APIs show a model the same prompt for the same conversation:

- ``system`` (a string or text blocks) and every ``role: "system"`` message inside ``messages``
  become one system prompt, in order (agents send mid-conversation system messages; rendering them
  in place breaks strict templates and tool calling).
- ``tool_result`` blocks become ``tool`` messages (``is_error`` prefixes ``Error:``), placed before
  the rest of their user turn; ``tool_use`` blocks become the assistant turn's tool calls.
- Consecutive turns of one role merge into one, as Anthropic combines them.
- ``thinking`` blocks of earlier turns are dropped, as Anthropic drops them from the context.
- A final assistant turn of text is a prefill: the model continues it (``continues_final``), and, as
  Anthropic requires, it may not end in whitespace.

Everything this server cannot read is a 400 naming it: image and document blocks, server tools,
a final assistant turn of tool calls, thinking with a budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from server.errors import InvalidRequestError
from server.protocol import ChatMessage, FunctionCall, ToolCall
from server.protocol.anthropic import (
    CustomTool,
    MessageCreateRequest,
    MessageParam,
    MessagesInput,
    RedactedThinkingBlockParam,
    ServerTool,
    TextBlockParam,
    ThinkingBlockParam,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
    UnsupportedBlock,
)
from server.services.limits import RequestLimits, check_message_count, first_unencodable_string, json_depth_exceeds
from server.services.turns import append_turn

# Claude Code puts a per-request attribution line first in the system prompt; it changes on every
# request, so left in it would sit at token 0 and defeat prefix-cache reuse between turns.
BILLING_HEADER = "x-anthropic-billing-header:"
BLOCK_SEPARATOR = "\n\n"


def _unsupported(block: UnsupportedBlock, where: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where}: content blocks of type '{block.type}' are not supported: this model reads text only.",
        param=where,
    )


def _as_blocks(content: str | Sequence[Any]) -> Sequence[Any]:
    return [TextBlockParam(type="text", text=content)] if isinstance(content, str) else content


def _system_text(blocks: Sequence[Any], where: str) -> str:
    parts = []
    for j, b in enumerate(blocks):
        if not isinstance(b, TextBlockParam):
            raise InvalidRequestError(f"{where}.content[{j}]: a system message holds text blocks only.", param=where)
        parts.append(b.text)
    return BLOCK_SEPARATOR.join(parts)


def _result_text(block: ToolResultBlockParam, where: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for k, part in enumerate(block.content):
            if isinstance(part, UnsupportedBlock):
                raise _unsupported(part, f"{where}.content[{k}]")
            parts.append(part.text)
        text = BLOCK_SEPARATOR.join(parts)
    return f"Error: {text}" if block.is_error else text


def _user_turn(blocks: Sequence[Any], where: str) -> list[ChatMessage]:
    results: list[ChatMessage] = []
    texts: list[str] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(b, TextBlockParam):
            texts.append(b.text)
        elif isinstance(b, ToolResultBlockParam):
            results.append(ChatMessage(role="tool", tool_call_id=b.tool_use_id, content=_result_text(b, at)))
        elif isinstance(b, UnsupportedBlock):
            raise _unsupported(b, at)
        else:
            raise InvalidRequestError(f"{at}: a '{b.type}' block belongs in an assistant turn.", param=at)
    if texts or not results:
        results.append(ChatMessage(role="user", content=BLOCK_SEPARATOR.join(texts)))
    return results


def _assistant_turn(blocks: Sequence[Any], where: str) -> ChatMessage:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(b, TextBlockParam):
            texts.append(b.text)
        elif isinstance(b, ToolUseBlockParam):
            arguments = json.dumps(b.input, ensure_ascii=False)
            calls.append(ToolCall(id=b.id, function=FunctionCall(name=b.name, arguments=arguments)))
        elif isinstance(b, ThinkingBlockParam | RedactedThinkingBlockParam):
            continue  # an earlier turn's thinking is not part of the context
        elif isinstance(b, UnsupportedBlock):
            raise _unsupported(b, at)
        else:
            raise InvalidRequestError(f"{at}: a '{b.type}' block belongs in a user turn.", param=at)
    return ChatMessage(role="assistant", content=BLOCK_SEPARATOR.join(texts), tool_calls=calls or None)


def chat_messages(req: MessagesInput) -> list[ChatMessage]:
    """The conversation as chat messages, the system prompt first (a 400 for what cannot be read)."""
    system = [] if req.system is None else _as_blocks(req.system)
    system_parts = [b.text for b in system if not b.text.startswith(BILLING_HEADER)]
    out: list[ChatMessage] = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        blocks = _as_blocks(m.content)
        if m.role == "system":
            system_parts.append(_system_text(blocks, where))
        elif m.role == "user":
            for message in _user_turn(blocks, where):
                append_turn(out, message)
        else:
            append_turn(out, _assistant_turn(blocks, where))
    if not out:
        raise InvalidRequestError("'messages' holds no user turn.", param="messages")
    last, at = out[-1], f"messages[{len(req.messages) - 1}]"
    if last.role == "assistant" and last.tool_calls:
        raise InvalidRequestError("A final assistant turn of tool calls cannot be continued.", param=at)
    if last.role == "assistant" and isinstance(last.content, str) and last.content != last.content.rstrip():
        raise InvalidRequestError("final assistant content cannot end with trailing whitespace", param=at)
    text = BLOCK_SEPARATOR.join(p for p in system_parts if p)
    return [ChatMessage(role="system", content=text), *out] if text else out


def continues_final(messages: Sequence[ChatMessage]) -> bool:
    """A final assistant turn is Anthropic's prefill: the reply continues it."""
    return bool(messages) and messages[-1].role == "assistant"


# ---- tools ------------------------------------------------------------------------------------


def function_tools(req: MessagesInput) -> list[dict[str, Any]] | None:
    """Anthropic tools as OpenAI function tools (what :func:`~server.prompting.tools.plan_tools` reads)."""
    if req.tools is None:
        return None
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools):
        if isinstance(tool, ServerTool):
            raise InvalidRequestError(
                f"tools[{i}]: server tools (type '{tool.type}') are not supported: this server runs no tools "
                "itself. Declare client tools with 'name' and 'input_schema'.",
                param=f"tools[{i}]",
            )
        function: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description or "",
            "parameters": tool.input_schema,
        }
        if tool.strict:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def openai_tool_choice(req: MessagesInput) -> tuple[str | dict[str, Any] | None, bool | None]:
    """``tool_choice`` as OpenAI's ``tool_choice`` and ``parallel_tool_calls``."""
    choice = req.tool_choice
    if choice is None:
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return ("required" if isinstance(choice, ToolChoiceAny) else "auto"), parallel


# ---- checks -----------------------------------------------------------------------------------


def _check_blocks(messages: Sequence[MessageParam], limits: RequestLimits) -> None:
    depth = limits.max_json_depth
    for i, m in enumerate(messages):
        if isinstance(m.content, str):
            continue
        if len(m.content) > limits.max_messages:
            raise InvalidRequestError(
                f"messages[{i}].content may hold at most {limits.max_messages} blocks; it has {len(m.content)}.",
                param=f"messages[{i}].content",
            )
        for j, b in enumerate(m.content):
            if isinstance(b, ToolUseBlockParam) and json_depth_exceeds(b.input, depth):
                where = f"messages[{i}].content[{j}].input"
                raise InvalidRequestError(f"'{where}' nests deeper than {depth} levels.", param=where)
            nested = b.content if isinstance(b, ToolResultBlockParam) and isinstance(b.content, list) else []
            if len(nested) > limits.max_messages:
                where = f"messages[{i}].content[{j}].content"
                raise InvalidRequestError(f"'{where}' holds more than {limits.max_messages} blocks.", param=where)


def check_input(req: MessagesInput, limits: RequestLimits) -> None:
    """The limits a Messages request (or a count) meets before anything is rendered."""
    check_message_count(len(req.messages), limits)
    if isinstance(req.system, list) and len(req.system) > limits.max_messages:
        raise InvalidRequestError(f"'system' may hold at most {limits.max_messages} blocks.", param="system")
    _check_blocks(req.messages, limits)
    for i, tool in enumerate(req.tools or []):
        if isinstance(tool, CustomTool) and json_depth_exceeds(tool.input_schema, limits.max_json_depth):
            raise InvalidRequestError(
                f"The input_schema of tools[{i}] nests deeper than {limits.max_json_depth} levels.",
                param=f"tools[{i}].input_schema",
            )
    bad = first_unencodable_string(req.model_dump(by_alias=True, exclude_none=True))
    if bad is not None:
        raise InvalidRequestError(f"'{bad}' holds text that is not valid Unicode (a lone surrogate).", param=bad)
    if isinstance(req.thinking, ThinkingEnabled):
        raise InvalidRequestError(
            "'thinking' with a budget is not supported: this model cannot think. Leave 'thinking' out, "
            "or set it to disabled.",
            param="thinking",
        )


def check_create(req: MessageCreateRequest, limits: RequestLimits) -> None:
    check_input(req, limits)
    if req.max_tokens > limits.max_tokens:
        raise InvalidRequestError(
            f"'max_tokens' is too large: {req.max_tokens}. This server generates at most {limits.max_tokens} "
            "tokens per request (and no more than the context leaves after the prompt).",
            param="max_tokens",
        )
    stops = req.stop_sequences or []
    if len(stops) > limits.max_stop:
        raise InvalidRequestError(f"'stop_sequences' takes at most {limits.max_stop} strings.", param="stop_sequences")
    for i, s in enumerate(stops):
        if len(s) > limits.max_stop_length:
            raise InvalidRequestError(
                f"Each stop sequence may be at most {limits.max_stop_length} characters; "
                f"stop_sequences[{i}] has {len(s)}.",
                param="stop_sequences",
            )
