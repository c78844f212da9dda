"""Chat prompt rendering: which template a model gets, and the templates themselves.

Selection (:func:`select_template`), first match wins:

1. ``--chat-template NAME|FILE``: a built-in name (``llama-3.1``, ``chatml``), a name llama.cpp knows
   (``gemma``, ``mistral-v7``, ...: rendered by llama.cpp, given as ``named``), or a Jinja file.
2. A GGUF template that is Llama 3.1's (header tokens plus its ``ipython``/date markers)
   -> the native builder in :mod:`server.prompting.llama3` (plain Python, byte-identical to Meta's).
3. Any other GGUF template -> that template in a sandboxed Jinja environment.
4. No template, but ``<|start_header_id|>``/``<|end_header_id|>``/``<|eot_id|>`` are single
   special tokens of the vocabulary -> the native Llama 3.1 builder.
5. Otherwise (or when the GGUF's template does not compile) ChatML.

A GGUF template is untrusted input (it comes from a downloaded file), so it runs in
``ImmutableSandboxedEnvironment`` (no access to Python internals, no mutation of the
values passed in) with the time and output limits of :mod:`server.prompting.template_guard`. It is
compiled once, when the model's service is built.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from jinja2 import TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import InvalidRequestError, LlamaserveError
from server.prompting import llama3
from server.prompting.named import NamedTemplate, NamedTemplates
from server.prompting.template_guard import RENDER_SECONDS, GuardedSandbox, render_guarded
from server.prompting.tools import ToolPlan, ToolStyle, generic_messages

log = logging.getLogger(__name__)

# ChatML: what a model without a template in its metadata gets.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA31_NAMES = frozenset({"llama-3.1", "llama3.1", "llama-3", "llama3"})
CHATML_NAMES = frozenset({"chatml"})

# A template mentions a `tools` variable when it renders tool definitions itself.
_TOOLS_VARIABLE = re.compile(r"\btools\b")


class ChatTemplateError(LlamaserveError):
    """A ``--chat-template`` value that names no template and no readable file."""


class ChatTemplate(Protocol):
    name: str
    bos_token: str  # the text the rendered prompt starts with when it carries BOS ("" if never)
    tool_style: ToolStyle
    reads: frozenset[str]  # the variables it reads besides messages (enable_thinking: it can switch thinking)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, Any] | None = None,
    ) -> str: ...


# What a template may read besides ``messages``, as Hugging Face and llama.cpp give it; a request's
# ``chat_template_kwargs`` may add simple values but never replace these.
RESERVED_VARIABLES = frozenset(
    {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception", "strftime_now"}
)


# ---- normalisation ----------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            text = part.get("text") if isinstance(part, Mapping) else None
            if kind != "text" or not isinstance(text, str):
                raise InvalidRequestError(
                    f"Content parts of type '{kind}' are not supported: this model reads text only.",
                    param="messages",
                )
            parts.append(text)
        return "".join(parts)
    raise InvalidRequestError("Message content must be a string or an array of content parts.", param="messages")


def _decode_arguments(arguments: Any) -> Any:
    # OpenAI sends arguments as a JSON string; templates expect the object (else it renders
    # double-encoded). A string that is not JSON is passed on as the string it is.
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages (plain dicts) -> what chat templates render.

    Content-part arrays are joined to their text, null content becomes "", ``developer``
    becomes ``system``, ``tool_calls[].function.arguments`` is decoded from its JSON
    string, and ``tool_calls`` is present only when non-empty (templates test for the key).
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        msg: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content_text(m.get("content")),
        }
        calls = m.get("tool_calls")
        if calls:
            msg["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": c.get("type", "function"),
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _decode_arguments(c["function"].get("arguments")),
                    },
                }
                for c in calls
            ]
        for key in ("name", "tool_call_id", "reasoning_content"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out


# ---- templates --------------------------------------------------------------------------------


class Llama31Template:
    """Meta's Llama 3.1 Instruct format, built natively (see :mod:`server.prompting.llama3`).

    Like the official template's ``{{ bos_token }}``, the prompt starts with the BOS text the
    caller gives: ``<|begin_of_text|>`` from a real Llama vocabulary, or "" from a caller that
    lets the tokenizer add BOS. Either way the prompt gets exactly one.
    """

    name = "llama-3.1"
    tool_style: ToolStyle = "llama3"
    reads = frozenset({"tools", "add_generation_prompt", "bos_token", "date_string"})

    def __init__(self, *, date: str | None = None, bos_token: str = llama3.BOS) -> None:
        # None: today's date at each render, as llama.cpp passes it.
        self.date = date
        self.bos_token = bos_token

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        # Of the variables, only the official template's own `date_string` changes what it writes.
        asked = (variables or {}).get("date_string")
        date = asked if isinstance(asked, str) else self.date
        return llama3.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, date=date, bos_token=self.bos_token
        )


def _raise(message: str) -> None:
    raise InvalidRequestError(f"The chat template refused the conversation: {message}", param="messages")


def _tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    # Hugging Face's tojson: no ASCII escaping, keys in the order given, no HTML escaping.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def sandboxed_environment() -> ImmutableSandboxedEnvironment:
    """A Jinja environment set up the way Hugging Face renders chat templates, with render limits."""
    env = GuardedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env


class JinjaChatTemplate:
    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        name: str = "jinja",
        render_seconds: float = RENDER_SECONDS,
    ) -> None:
        env = sandboxed_environment()
        try:
            self._template = env.from_string(source)
            self.reads = frozenset(meta.find_undeclared_variables(env.parse(source)))
        except TemplateError as exc:
            raise ChatTemplateError(f"The chat template ({name}) does not compile: {exc}") from exc
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.tool_style: ToolStyle = "template" if _TOOLS_VARIABLE.search(source) else "generic"
        self.render_seconds = render_seconds

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        # As llama.cpp renders: today's date in the `26 Jul 2024` form Llama 3.x templates default to
        # (else they print their own 2024 date), then the request's chat_template_kwargs, then ours.
        context = {
            "date_string": llama3.date_string(),
            **(variables or {}),
            **extra,
            "messages": list(messages),
            "add_generation_prompt": add_generation_prompt,
            "tools": tools,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            # A time and size limit (server/prompting/template_guard.py): a template is someone else's code.
            return render_guarded(self._template, context, seconds=self.render_seconds)
        except InvalidRequestError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            # A template is someone else's code: any failure is a conversation it cannot render.
            raise InvalidRequestError(f"The chat template failed to render: {exc}", param="messages") from exc


# ---- selection --------------------------------------------------------------------------------


def is_llama31_template(source: str) -> bool:
    """Llama 3.1/3.2/3.3 Instruct templates: Llama 3 headers plus the 3.1 tool role or date lines.

    A Llama 3.0 template has the headers but neither marker; it keeps its own Jinja.
    """
    headers = "<|start_header_id|>" in source and "<|end_header_id|>" in source
    return headers and ("ipython" in source or "Cutting Knowledge Date" in source)


def select_template(
    gguf_template: str | None,
    *,
    override: str | None = None,
    has_special_token: Callable[[str], bool] = lambda text: False,
    bos_token: str = "",
    eos_token: str = "",
    named: NamedTemplates | None = None,
) -> ChatTemplate:
    """Pick the model's template (order in the module docstring).

    ``has_special_token(text)`` says whether ``text`` tokenizes as one special token of the
    model's vocabulary; ``bos_token``/``eos_token`` are the texts templates start/end with
    (give "" when the tokenizer adds BOS, and then tokenize with BOS added). ``named``: the
    templates llama.cpp knows by name, after ours (``llama3`` and ``chatml`` stay ours).
    """
    if override:
        key = override.strip().lower()
        if key in LLAMA31_NAMES:
            return Llama31Template(bos_token=bos_token)
        if key in CHATML_NAMES:
            return JinjaChatTemplate(CHATML, bos_token=bos_token, eos_token=eos_token, name="chatml")
        known = named.names() if named is not None else frozenset()
        if key in known and named is not None:
            return NamedTemplate(key, named, bos_token=bos_token)
        path = Path(override).expanduser()
        if not path.is_file():
            names = ", ".join(sorted(LLAMA31_NAMES | CHATML_NAMES | known))
            raise ChatTemplateError(f"--chat-template {override!r} is neither a template name ({names}) nor a file.")
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"Cannot read the chat template file {path}: {exc}") from exc
        return JinjaChatTemplate(source, bos_token=bos_token, eos_token=eos_token, name=f"file:{path.name}")
    if gguf_template:
        if is_llama31_template(gguf_template):
            return Llama31Template(bos_token=bos_token)
        try:
            return JinjaChatTemplate(gguf_template, bos_token=bos_token, eos_token=eos_token, name="gguf")
        except ChatTemplateError as exc:
            # As llama.cpp does: a broken template in a downloaded file should not stop the server.
            log.warning("%s; using ChatML instead (or pass --chat-template)", exc)
    if all(has_special_token(t) for t in llama3.HEADER_TOKENS):
        return Llama31Template(bos_token=bos_token)
    return JinjaChatTemplate(CHATML, bos_token=bos_token, eos_token=eos_token, name="chatml")


def open_final_message(rendered: str, final_text: str) -> str:
    """The prompt cut right after the final message's text, so the model continues that message.

    Hugging Face's ``continue_final_message`` (which vLLM follows): render the whole conversation,
    then drop what the template wrote after the last occurrence of the final message (its end-of-turn
    and anything later). A template that trims the text is trimmed after.
    """
    stripped = final_text.strip()
    at = rendered.rfind(stripped)
    if at < 0:
        raise InvalidRequestError(
            "The final message cannot be continued: the chat template does not show its text as given "
            "(send continue_final_message: false to answer it instead).",
            param="messages",
        )
    kept = final_text.lstrip()
    end = at + len(kept) if rendered[at : at + len(kept)] == kept else at + len(stripped)
    return rendered[:end]


def render_chat(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    plan: ToolPlan | None = None,
    *,
    add_generation_prompt: bool = True,
    continue_final: bool = False,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """OpenAI messages (plain dicts) and the request's tool plan -> the exact prompt text.

    ``continue_final``: the final message is left open (no end of turn, no generation prompt) for the
    model to continue: an assistant prefill. An empty final assistant message is just the open reply.
    """
    normalised = normalize_messages(messages)
    final_text = normalised[-1]["content"] if continue_final and normalised else ""
    if continue_final and not final_text.strip():
        if not normalised or normalised[-1]["role"] != "assistant":
            raise InvalidRequestError("Only an empty assistant message can be continued.", param="messages")
        normalised, continue_final, add_generation_prompt = normalised[:-1], False, True
    if template.tool_style == "generic":
        rendered = template.render(
            generic_messages(normalised, plan), add_generation_prompt=add_generation_prompt, variables=variables
        )
    else:
        tools = plan.prompt_tools() if plan is not None else None
        rendered = template.render(
            normalised, tools=tools, add_generation_prompt=add_generation_prompt, variables=variables
        )
    return open_final_message(rendered, final_text) if continue_final else rendered
