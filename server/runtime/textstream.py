"""Incremental detokenization with stop strings.

Tokens arrive as raw bytes; a UTF-8 character may be split across tokens, and a
stop string may be split across tokens too. :class:`TextStream` emits only text
that is final: complete characters that cannot be the start of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False
        # Which stop string ended the text (APIs such as Anthropic's report it back).
        self.matched: str | None = None

    def push(self, piece: bytes) -> str:
        """Feed one token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: return whatever is still held (never a stop string)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        held = self._held
        found = [(i, s) for s in self._stop if (i := held.find(s)) >= 0]
        if found:
            # The earliest match wins; at the same place, the one listed first.
            cut, self.matched = min(found, key=lambda f: f[0])
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = 0 if final else self._partial_stop_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best
