"""llama.cpp's named chat templates (``llama_chat_builtin_templates``), rendered by llama.cpp itself.

``--chat-template gemma`` (or any of the ~50 names llama.cpp knows) selects one; the prompting layer
sees only the two methods of :class:`LlamaNamedTemplates` (it never imports the engine), and gives
them plain role/content text: these templates know nothing of tools, so tools reach them as text.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp


class LlamaNamedTemplates:
    """The names llama.cpp knows, and ``llama_chat_apply_template`` over one of them."""

    def names(self) -> frozenset[str]:
        count = llama_cpp.llama_chat_builtin_templates(None, 0)
        if count <= 0:
            return frozenset()
        out = (ctypes.c_char_p * count)()
        llama_cpp.llama_chat_builtin_templates(out, count)
        return frozenset(name.decode("utf-8") for name in out if name is not None)

    def apply(self, name: str, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        # The structs point into these bytes objects: keep them referenced until the call returns.
        encoded = [(role.encode("utf-8"), content.encode("utf-8")) for role, content in messages]
        chat = (llama_cpp.llama_chat_message * max(len(encoded), 1))(
            *(llama_cpp.llama_chat_message(role, content) for role, content in encoded)
        )
        size = 2 * sum(len(r) + len(c) for r, c in encoded) + 1024
        for _ in range(2):  # the first call says how long the text is when the buffer was too small
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(
                name.encode("utf-8"), chat, len(encoded), add_generation_prompt, buf, size
            )
            if n < 0:
                raise ValueError(f"llama.cpp has no chat template named {name!r}")
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1
        raise ValueError(f"llama.cpp's {name!r} template did not fit its buffer")
