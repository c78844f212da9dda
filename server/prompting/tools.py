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
- The output: :meth:`ToolPlan.parse` turns the text into calls (``<|python_tag|>``, bare JSON
  ``{"name", "parameters"|"arguments"}``, several of them, a JSON array, ``<tool_call>`` tags,
  code fences, ``<function=NAME>{...}</function>``). Text that names an undeclared function,
  or holds anything beside the calls, is not a call and stays content.
- Streaming (:class:`ToolChoiceStreamer`): a grammar-forced call streams as OpenAI's do (id and
  name first, then argument fragments as they are generated); otherwise :class:`ToolCallStream`
  holds back text that may turn into a call and releases it as content the moment it cannot.
  Both send the arguments exactly as the model wrote them, so a stream reassembles into the
  same call the non-streamed response holds.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from server.errors import InvalidRequestError
from server.prompting.grammar import json_schema_to_gbnf
from server.protocol import ChunkDelta, FunctionCall, ToolCall, ToolCallDelta, ToolCallFunctionDelta

# How a template wants tools: Llama 3.1's own JSON format, the Jinja template's own syntax,
# or (a template that knows no tools) a description in the system prompt.
ToolStyle = Literal["llama3", "template", "generic"]
ToolMode = Literal["none", "auto", "required", "function"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL_KEYS = frozenset({"name", "parameters", "arguments", "type", "id"})
_ID_ALPHABET = string.ascii_letters + string.digits
# Argument text goes out in fragments of this many characters, as OpenAI streams it.
ARGUMENT_FRAGMENT = 8
# What a tool call may start with; anything else is content from its first character.
_CALL_STARTS = ("{", "[", "```", "<tool_call>", "<function=", "<|python_tag|>", "[TOOL_CALLS]")


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    strict: bool


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Mapping[str, Any]
    # The arguments object exactly as the model wrote it, when it wrote one: streamed and
    # non-streamed responses both send this text, so they agree byte for byte.
    raw_arguments: str | None = field(default=None, compare=False)

    def arguments_json(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


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


# ---- parsing model output ---------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FUNCTION_TAG = re.compile(r"<function=([a-zA-Z0-9_-]+)>(.*?)</function>", re.DOTALL)
_SEPARATORS = " \t\r\n;,"


_JSON_WS = " \t\r\n"


def _json_values(text: str) -> list[tuple[Any, int]] | None:
    """Every JSON value in ``text`` with its start, separated by whitespace, ';' or ','; None if anything else."""
    decoder = json.JSONDecoder()
    values: list[tuple[Any, int]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SEPARATORS:
            i += 1
        if i >= n:
            return values
        start = i
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.append((value, start))


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _JSON_WS:
        i += 1
    return i


def _member_texts(text: str, start: int) -> dict[str, str]:
    """The source text of each top-level member value of the valid JSON object at ``text[start]``."""
    decoder = json.JSONDecoder()
    out: dict[str, str] = {}
    i = _skip_ws(text, start + 1)
    while text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past the ':'
        _, end = decoder.raw_decode(text, i)
        out[key] = text[i:end]
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return out


def _as_call(value: Any, allowed: set[str], members: Mapping[str, str] | None = None) -> ParsedCall | None:
    if not isinstance(value, Mapping) or not set(value) <= _CALL_KEYS:
        return None
    if value.get("type", "function") != "function":
        return None
    name = value.get("name")
    if not isinstance(name, str) or name not in allowed:
        return None
    if "parameters" in value and "arguments" in value:
        return None
    args = value.get("parameters", value.get("arguments", {}))
    if isinstance(args, str):
        # Some models write the arguments as a JSON string, as OpenAI sends them.
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        return None
    raw = None
    if members is not None:
        key = "parameters" if "parameters" in value else "arguments"
        text = members.get(key)
        raw = text if text is not None and text.startswith("{") else None
    return ParsedCall(name=name, arguments=dict(args), raw_arguments=raw)


def parse_tool_calls(text: str, allowed: set[str]) -> list[ParsedCall]:
    """The calls ``text`` consists of, all to functions in ``allowed``; [] when it is content."""
    body = text.strip()
    for marker in ("<|python_tag|>", "[TOOL_CALLS]"):  # Llama 3.1's and Mistral's call markers
        body = body.removeprefix(marker).strip()
    for end in ("<|eom_id|>", "<|eot_id|>"):
        body = body.removesuffix(end).strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    if not body:
        return []
    if _FUNCTION_TAG.search(body):
        if _FUNCTION_TAG.sub("", body).strip(_SEPARATORS):
            return []
        calls = []
        for name, args_text in _FUNCTION_TAG.findall(body):
            try:
                args = json.loads(args_text) if args_text.strip() else {}
            except ValueError:
                return []
            call = _as_call({"name": name, "parameters": args}, allowed)
            if call is None:
                return []
            calls.append(call)
        return calls
    if _TAGGED.search(body):
        if _TAGGED.sub("", body).strip(_SEPARATORS):
            return []
        body = "\n".join(_TAGGED.findall(body))
    values = _json_values(body)
    if not values:
        return []
    calls = []
    for value, start in values:
        if isinstance(value, list):
            found = [_as_call(v, allowed) for v in value]
        else:
            members = _member_texts(body, start) if isinstance(value, dict) else None
            found = [_as_call(value, allowed, members)]
        for call in found:
            if call is None:
                return []
            calls.append(call)
    return calls


# ---- streaming --------------------------------------------------------------------------------


def _may_become_call(text: str) -> bool:
    return any(text.startswith(s) or s.startswith(text) for s in _CALL_STARTS)


class ToolCallStream:
    """Per choice: passes content through, holding back text that may still become a call.

    Text is held only while the output so far (leading whitespace aside) is a possible start
    of a call; the first character that rules a call out releases everything as content.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._held = ""
        self._holding = plan.calls_enabled

    def push(self, text: str) -> str:
        """Feed generated text; return the content to send now."""
        if not self._holding:
            return text
        self._held += text
        stripped = self._held.lstrip()
        if not stripped or _may_become_call(stripped):
            return ""
        self._holding = False
        out, self._held = self._held, ""
        return out

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """End of generation: (content still to send, calls)."""
        held, self._held = self._held, ""
        if not self._holding:
            return held, []
        calls = self._plan.parse(held)
        return ("", calls) if calls else (held, [])


# How a grammar-forced call begins, up to its arguments object.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]{1,64})"\s*,\s*"(?:parameters|arguments)"\s*:\s*')


class _ObjectEnd:
    """Finds, incrementally, where the JSON object starting at a given index closes."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, text: str, start: int) -> int | None:
        """Scan ``text[start:]``; the index just past the closing brace, or None if not there yet."""
        for i in range(start, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


class ToolChoiceStreamer:
    """The service's choice streamer when calls are possible: content deltas, or tool-call deltas.

    When a grammar forces the call (``required``, a named function), the output is known to be
    one call, so it streams as OpenAI's does: the id and name as soon as they are written, then
    the arguments fragment by fragment. Otherwise text that may become a call is held back and
    sent, as calls or as content, once it is decided (:class:`ToolCallStream`).
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._buffered = ToolCallStream(plan)
        self._progressive = plan.mode in ("required", "function")
        self._text = ""
        self._name = ""
        self._call_id: str | None = None
        self._args_from = 0
        self._sent = 0
        self._args_end: int | None = None
        self._scanner = _ObjectEnd()

    def push(self, text: str) -> list[ChunkDelta]:
        if not self._progressive:
            out = self._buffered.push(text)
            return [ChunkDelta(content=out)] if out else []
        self._text += text
        return self._advance()

    def _advance(self) -> list[ChunkDelta]:
        out: list[ChunkDelta] = []
        if self._call_id is None:
            head = _CALL_HEAD.match(self._text)
            if head is None or head.end() >= len(self._text):
                return out
            if self._text[head.end()] != "{" or head.group(1) not in {f.name for f in self._plan.allowed()}:
                # Not the shape the grammar writes: decide at the end, as without a grammar.
                self._progressive = False
                return self.push(self._text)
            self._name = head.group(1)
            self._call_id = new_call_id()
            self._args_from = self._sent = head.end()
            first = ToolCallDelta(
                index=0,
                id=self._call_id,
                type="function",
                function=ToolCallFunctionDelta(name=self._name, arguments=""),
            )
            out.append(ChunkDelta(tool_calls=[first]))
        if self._args_end is None:
            end = self._scanner.feed(self._text, self._sent)
            upto = len(self._text) if end is None else end
            if upto > self._sent:
                fragment = ToolCallDelta(
                    index=0, function=ToolCallFunctionDelta(arguments=self._text[self._sent : upto])
                )
                out.append(ChunkDelta(tool_calls=[fragment]))
                self._sent = upto
            self._args_end = end
        return out

    def finish(self, text: str) -> tuple[list[ChunkDelta], bool]:
        """The last text; returns the deltas and whether the choice made tool calls."""
        deltas = self.push(text)
        if self._call_id is not None:
            calls = self._plan.parse(self._text)
            streamed = self._text[self._args_from : self._args_end or len(self._text)]
            if not calls or calls[0].name != self._name or calls[0].arguments_json() != streamed:
                # Cut short (max_tokens): the partial call stays as sent, as OpenAI's does.
                return deltas, False
            rest = to_tool_calls(calls[1:])
            deltas += [ChunkDelta(tool_calls=[d]) for d in tool_call_deltas(rest, first_index=1)]
            return deltas, True
        if self._progressive:  # the call never began: decide on the whole text
            self._progressive = False
            deltas += self.push(self._text)
        content, calls = self._buffered.finish()
        if content:
            deltas.append(ChunkDelta(content=content))
        deltas += [ChunkDelta(tool_calls=[d]) for d in tool_call_deltas(to_tool_calls(calls))]
        return deltas, bool(calls)


def tool_call_deltas(calls: Sequence[ToolCall], *, first_index: int = 0) -> Iterator[ToolCallDelta]:
    """OpenAI's streaming spelling: per call, ``index`` + ``id`` + name first, then argument fragments."""
    for i, call in enumerate(calls, start=first_index):
        yield ToolCallDelta(
            index=i, id=call.id, type="function", function=ToolCallFunctionDelta(name=call.function.name, arguments="")
        )
        args = call.function.arguments
        for start in range(0, len(args), ARGUMENT_FRAGMENT):
            yield ToolCallDelta(
                index=i, function=ToolCallFunctionDelta(arguments=args[start : start + ARGUMENT_FRAGMENT])
            )
