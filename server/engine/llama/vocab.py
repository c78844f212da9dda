"""A loaded model's vocabulary: text to token ids, and each token's raw bytes.

The engine and the embedder it makes share one :class:`Vocab`: both read the same
model, and llama.cpp's vocabulary calls only read it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp


class Vocab:
    def __init__(self, model: Any) -> None:
        self.ptr: Any = llama_cpp.llama_model_get_vocab(model)
        self.n_tokens = int(llama_cpp.llama_vocab_n_tokens(self.ptr))
        # Rendered pieces, filled on first use: detokenizing a stream asks for the
        # same few thousand tokens over and over.
        self._pieces: list[bytes | None] = [None] * self.n_tokens

    @property
    def bos(self) -> int | None:
        bos = int(llama_cpp.llama_vocab_bos(self.ptr))
        return bos if bos >= 0 else None

    @property
    def eos(self) -> int | None:
        eos = int(llama_cpp.llama_vocab_eos(self.ptr))
        return eos if eos >= 0 else None

    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token (a walk over the whole vocabulary: call it once)."""
        is_eog = llama_cpp.llama_vocab_is_eog
        return frozenset(t for t in range(self.n_tokens) if is_eog(self.ptr, t))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8  # never more tokens than bytes, plus BOS/EOS
        for _ in range(2):
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.ptr, data, len(data), buf, cap, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            if n == -(2**31):
                break
            cap = -n
        raise ValueError("text is too long to tokenize")

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of ``token``; ``b""`` for control and end-of-generation tokens.

        Control tokens (``<|im_end|>``, ``<|eot_id|>``, ...) are markup of the chat
        format, not text: rendering them would leak them into completions. Pass
        ``special=True`` to get their text anyway (e.g. to spot a tool-call marker
        that the model emits as a control token). User-defined added tokens are
        text and always rendered.
        """
        if special:
            return self._piece(token, True)
        cached = self._pieces[token]
        if cached is None:
            is_eog = llama_cpp.llama_vocab_is_eog(self.ptr, token)
            cached = b"" if is_eog else self._piece(token, False)
            self._pieces[token] = cached
        return cached

    def _piece(self, token: int, special: bool) -> bytes:
        if not 0 <= token < self.n_tokens:
            raise ValueError(f"token {token} is outside the vocabulary")
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.ptr, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n
