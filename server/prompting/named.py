"""Chat templates known by name outside this package: llama.cpp's (``llama_chat_builtin_templates``).

The engine layer renders them (:mod:`server.engine.llama.chat_builtin`); this package sees only the
:class:`NamedTemplates` protocol, so prompting never imports the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from server.prompting.tools import ToolStyle


class NamedTemplates(Protocol):
    """Templates known by name outside this package (llama.cpp's: ``server.engine.llama.chat_builtin``)."""

    def names(self) -> frozenset[str]: ...

    def apply(self, name: str, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str: ...


class NamedTemplate:
    """One of llama.cpp's named templates: role and content text only (tools reach it as text)."""

    tool_style: ToolStyle = "generic"
    reads = frozenset({"add_generation_prompt"})

    def __init__(self, name: str, templates: NamedTemplates, *, bos_token: str = "") -> None:
        self.name = name
        self.bos_token = bos_token
        self._templates = templates

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        pairs = [(str(m.get("role")), str(m.get("content") or "")) for m in messages]  # normalised: text
        return self._templates.apply(self.name, pairs, add_generation_prompt)
