"""Tool calling: OpenAI ``tools``/``tool_choice`` in, OpenAI ``tool_calls`` out.

The pieces, in the order a request meets them:

- :func:`plan_tools` checks ``tools``, ``tool_choice`` and ``parallel_tool_calls`` (a 400 for
  anything wrong) and returns a :class:`ToolPlan`.
- The prompt: Llama 3.1 models get the tools through their own format (:mod:`server.prompting.llama3`);
  a Jinja template that renders ``tools`` gets them as they are; any other template gets them
  described in the system prompt by :func:`generic_messages`, with a generic JSON call format
  ``{"name": ..., "arguments": {...}}``.
- ``tool_choice`` ``required`` or a named function: :meth:`ToolPlan.grammar` constrains the
  output to one JSON call of a declared function whose arguments satisfy its schema.
- The output: :meth:`ToolPlan.parse` turns the text into calls (:mod:`server.prompting.tool_parse`
  knows the formats); text that is not a call stays content.
- Streaming lives with the chat service (:mod:`server.services.tool_stream`).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import InvalidRequestError
from server.prompting.grammar import json_schema_to_gbnf
from server.prompting.tool_parse import ParsedCall, parse_tool_calls
from server.protocol import FunctionCall, ToolCall

# How a template wants tools: Llama 3.1's own JSON format, the Jinja template's own syntax,
# or (a template that knows no tools) a description in the system prompt.
ToolStyle = Literal["llama3", "template", "generic"]
ToolMode = Literal["none", "auto", "required", "function"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    strict: bool


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def to_tool_calls(calls: Sequence[ParsedCall]) -> list[ToolCall]:
    return [ToolCall(id=new_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments_json())) for c in calls]


def response_message_parts(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall] | None]:
    """A finished choice's (content, tool_calls): calls and null content, or the text as content."""
    calls = plan.parse(text) if plan is not None else None
    if calls:
        return None, to_tool_calls(calls)
    return text, None


# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    definitions: tuple[Mapping[str, Any], ...]  # the tools as the request gave them
    functions: tuple[FunctionTool, ...]
    mode: ToolMode
    forced: str | None  # the function tool_choice names
    parallel: bool
    style: ToolStyle

    @property
    def calls_enabled(self) -> bool:
        return self.mode != "none" and bool(self.functions)

    @property
    def arguments_key(self) -> str:
        return "parameters" if self.style == "llama3" else "arguments"

    def allowed(self) -> tuple[FunctionTool, ...]:
        if self.forced is not None:
            return tuple(f for f in self.functions if f.name == self.forced)
        return self.functions

    def prompt_tools(self) -> list[Mapping[str, Any]] | None:
        """The tool definitions the prompt shows (none when ``tool_choice`` is ``none``)."""
        return list(self.definitions) if self.calls_enabled else None

    def grammar(self) -> str | None:
        """GBNF forcing one call for ``required``/a named function; None when the model may chat."""
        if self.mode not in ("required", "function") or not self.functions:
            return None
        allowed = self.allowed()
        defs: dict[str, Any] = {}
        options = []
        for f in allowed:
            params = dict(f.parameters)
            # References point at the root ("#/$defs/x"): the tool's definitions move there.
            for key in ("$defs", "definitions"):
                if isinstance(params.get(key), Mapping):
                    defs.setdefault(key, {}).update(params.pop(key))
            options.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": f.name}, self.arguments_key: params},
                    "required": ["name", self.arguments_key],
                    "additionalProperties": False,
                }
            )
        schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
        schema = {**schema, **defs}
        try:
            return json_schema_to_gbnf(schema, strict=all(f.strict for f in allowed))
        except InvalidRequestError as exc:
            exc.param = "tools"
            raise

    def parse(self, text: str) -> list[ParsedCall] | None:
        """The calls ``text`` consists of, or None when it is content."""
        if not self.calls_enabled:
            return None
        calls = parse_tool_calls(text, {f.name for f in self.allowed()})
        if calls and not self.parallel:
            calls = calls[:1]
        return calls or None


def _function_tool(tool: Any, i: int) -> FunctionTool:
    where = f"tools[{i}]"
    if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(tool.get("function"), Mapping):
        raise InvalidRequestError(
            f"Invalid value for '{where}': only tools of type 'function' with a 'function' object are supported.",
            param=where,
        )
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"Invalid value for '{where}.function.name': must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'.",
            param=f"{where}.function.name",
        )
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, Mapping):
        raise InvalidRequestError(
            f"Invalid value for '{where}.function.parameters': must be a JSON schema object.",
            param=f"{where}.function.parameters",
        )
    description = fn.get("description") or ""
    return FunctionTool(name=name, description=str(description), parameters=params, strict=fn.get("strict") is True)


def plan_tools(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    parallel_tool_calls: bool | None,
    style: ToolStyle,
) -> ToolPlan | None:
    """Check the request's tool fields; None when the request has no tools (a 400 when wrong)."""
    functions = tuple(_function_tool(t, i) for i, t in enumerate(tools or ()))
    names = [f.name for f in functions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequestError(f"Tool names must be unique; repeated: {', '.join(duplicates)}.", param="tools")
    forced: str | None = None
    if tool_choice is None:
        mode: ToolMode = "auto" if functions else "none"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': {tool_choice!r}; expected 'none', 'auto', 'required' "
                "or a function object.",
                param="tool_choice",
            )
        mode = tool_choice  # type: ignore[assignment]
    else:
        fn = tool_choice.get("function")
        if tool_choice.get("type") != "function" or not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(
                'Invalid value for \'tool_choice\': expected {"type": "function", "function": {"name": ...}}.',
                param="tool_choice",
            )
        forced = fn["name"]
        mode = "function"
        if forced not in names:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': no tool named {forced!r} is declared in 'tools'.",
                param="tool_choice",
            )
    if mode in ("required", "function") and not functions:
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if not functions:
        return None
    return ToolPlan(
        definitions=tuple(tools or ()),
        functions=functions,
        mode=mode,
        forced=forced,
        parallel=parallel_tool_calls is not False,
        style=style,
    )


# ---- the generic prompt (templates that know no tools) ----------------------------------------


def generic_instructions(plan: ToolPlan) -> str:
    lines = ["You can call these tools (functions), described in JSON:"]
    for f in plan.functions:
        described = {"name": f.name, "description": f.description, "parameters": f.parameters}
        lines.append(json.dumps(described, ensure_ascii=False))
    lines.append("")
    lines.append("To call a tool, reply with only a JSON object in this format, and nothing else:")
    lines.append('{"name": "<tool name>", "arguments": {"<argument name>": <value>}}')
    if plan.mode == "function":
        lines.append(f'You must call the tool "{plan.forced}" now.')
    elif plan.mode == "required":
        lines.append("You must call one of the tools now.")
    else:
        lines.append("If no tool is needed, answer the user normally.")
        lines.append("Once a tool has returned its result, answer the user in plain text using that result.")
    return "\n".join(lines)


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    return json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")}, ensure_ascii=False)


def generic_messages(messages: Sequence[Mapping[str, Any]], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """Normalised messages -> messages any chat template renders (no tool roles, no tool_calls).

    Tools go into the system message. A finished tool exchange becomes context for the model:
    the call and its result are appended to the user turn that asked for it, and an assistant
    turn that held only calls is dropped, because small models shown their own JSON call turn
    copy it instead of answering. Roles keep alternating, which strict templates demand.
    """
    out: list[dict[str, Any]] = []
    calls_by_id: dict[str, Mapping[str, Any]] = {}
    for m in messages:
        msg = dict(m)
        calls = msg.pop("tool_calls", None)
        if calls:
            for c in calls:
                calls_by_id[str(c.get("id"))] = c.get("function", c)
            if not msg.get("content"):
                continue
        if msg.get("role") == "tool":
            fn = calls_by_id.get(str(msg.get("tool_call_id")), {})
            args = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
            result = f"[{fn.get('name', 'tool')}({args}) returned: {msg.get('content', '')}]"
            if out and out[-1].get("role") == "user":
                out[-1] = {**out[-1], "content": f"{out[-1].get('content', '')}\n\n{result}"}
                continue
            msg = {"role": "user", "content": result}
        out.append(msg)
    if plan is not None and plan.calls_enabled:
        instructions = generic_instructions(plan)
        if out and out[0].get("role") == "system":
            system = out[0].get("content") or ""
            out[0] = {**out[0], "content": f"{system}\n\n{instructions}" if system else instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out
