"""Token-prefix arithmetic and the digests that name cached states."""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Mapping, Sequence


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``.

    Bisects on slice equality, which runs in C: a few dozen list compares instead
    of a Python loop over thousands of tokens.
    """
    hi = min(len(a), len(b), limit)
    if hi <= 0 or a[0] != b[0]:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 1  # a[:lo] == b[:lo] holds; a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def is_prefix(short: list[int], long: list[int]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def tokens_to_bytes(tokens: Sequence[int]) -> bytes:
    """Tokens as little-endian int32, the form that is hashed and written to disk."""
    packed = array("i", tokens)
    if packed.itemsize != 4:  # pragma: no cover - every platform CPython runs on has a 4-byte C int
        raise RuntimeError("array('i') is not 32-bit here")
    return packed.tobytes()


def tokens_from_bytes(data: bytes) -> list[int]:
    return array("i", data).tolist()


def state_key(identity: str, tokens: Sequence[int]) -> str:
    """The name of the state of ``tokens`` under ``identity``: hex, safe as a file name."""
    h = hashlib.sha256(identity.encode())
    h.update(tokens_to_bytes(tokens))
    return h.hexdigest()


def identity_digest(parts: Mapping[str, object]) -> str:
    """One digest of everything that shapes a saved state (model file, KV layout, llama.cpp version).

    A state saved under one digest is never offered to a context with another.
    """
    canonical = json.dumps(dict(parts), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
