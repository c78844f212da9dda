"""The per-token fast path of a stream: a chunk that carries only text, serialised by template.

Most chunks of a stream differ only in a few characters of text. Building each through the
wire models (a pydantic chunk validated, dumped, then its delta dumped again) cost more of the
event loop's time per token than the socket write, and on a CPU that time is taken from the
decode. So the first text chunk of each choice is made the slow way, around a sentinel, and its
JSON is cut there; every later one is that JSON with the text's own JSON spliced in: the same
bytes the slow path writes, at the cost of one ``json.dumps`` of a short string.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring

from server.services.pipeline import Chunk, EncodedChunk

# Not text a model can send: a control character json.dumps escapes, around a name.
_SENTINEL = "\x00llamaserve-text\x00"


def dumps(value: object) -> str:
    """The JSON of one chunk as every stream writes it: compact, and not ASCII-escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class TextChunks:
    """Per index (a choice's, or a content block's), the JSON around a text-only chunk's text,
    made once by ``render``.

    ``render(index, text)`` is the slow path: the chunk dict for ``index`` carrying ``text``,
    built through the wire models. ``event`` names the SSE event, where the API names them.
    """

    def __init__(self, render: Callable[[int, str], Chunk], *, event: str | None = None) -> None:
        self._render = render
        self._event = event
        self._around: dict[int, tuple[str, str]] = {}

    def encode(self, index: int, text: str) -> EncodedChunk:
        around = self._around.get(index)
        if around is None:
            whole = dumps(self._render(index, _SENTINEL))
            marker = json.dumps(_SENTINEL, ensure_ascii=False)
            if whole.count(marker) != 1:
                raise ValueError("the chunk must carry the text exactly once")
            before, after = whole.split(marker)
            around = self._around[index] = (before, after)
        # encode_basestring is what json.dumps(text, ensure_ascii=False) calls, without building an encoder.
        return EncodedChunk(around[0] + encode_basestring(text) + around[1], self._event)
