"""One sequence's KV state in and out of a llama.cpp context, and the identity its saved copies carry.

``llama_state_seq_get_data`` copies a sequence's cells (their positions, and K and V of every
layer) out to host memory; ``llama_state_seq_set_data`` writes them into another sequence of a
context with the same model and KV layout, and checks that layout as it reads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from typing import Any

import llama_cpp

from server.engine.prompt_cache.keys import identity_digest

# Enough of a GGUF to cover its header, metadata and vocabulary, and a first slice of tensor data.
HEAD_BYTES = 8 * 2**20
STATE_FORMAT = 1  # bump when the saved bytes change meaning


def save_seq(ctx: Any, seq_id: int, into: bytearray | None = None) -> bytearray | None:
    """A copy of the sequence's state, or None when llama.cpp gives none.

    ``into``, when given, is a buffer nobody else reads any more: it is resized and written over
    (CPython keeps the block when it shrinks, and grows a large one in place), so the copy lands
    in pages this process already holds instead of tens of MB of fresh ones.
    """
    size = int(llama_cpp.llama_state_seq_get_size(ctx, seq_id))
    if size <= 0:
        return None
    data = _sized(into, size) if into is not None else bytearray(size)
    written = int(llama_cpp.llama_state_seq_get_data(ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq_id))
    if written <= 0:
        return None
    del data[written:]
    return data


def _sized(buf: bytearray, size: int) -> bytearray:
    try:
        if len(buf) > size:
            del buf[size:]
        elif len(buf) < size:
            buf.extend(bytes(size - len(buf)))
    except BufferError:  # someone still holds a view of it after all: take fresh memory
        return bytearray(size)
    return buf


def restore_seq(ctx: Any, seq_id: int, data: bytearray) -> bool:
    """Write a saved state into ``seq_id`` (which should be empty); False when llama.cpp refuses it."""
    buf = (ctypes.c_uint8 * len(data)).from_buffer(data)
    return int(llama_cpp.llama_state_seq_set_data(ctx, buf, len(data), seq_id)) > 0


def restore_prefix(ctx: Any, seq_id: int, data: bytearray, n_tokens: int) -> bool:
    """Write a saved state into the empty ``seq_id`` and keep its first ``n_tokens`` cells.

    False when llama.cpp refuses the state (not enough free cells, another layout) or the trim (a
    model whose cells cannot be cut): the sequence is left empty then.
    """
    mem = llama_cpp.llama_get_memory(ctx)
    if restore_seq(ctx, seq_id, data) and llama_cpp.llama_memory_seq_rm(mem, seq_id, n_tokens, -1):
        return True
    llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)
    return False


def cache_identity(model_path: str, cparams: Any, *, n_ctx_per_seq: int, n_gpu_layers: int) -> str:
    """What a saved state depends on: the model file, the KV layout, llama.cpp's version.

    The file is known by its size, modification time and a hash of its first bytes (header,
    metadata, vocabulary): reading all of a large model at every start would cost seconds.
    """
    st = os.stat(model_path)
    with open(model_path, "rb") as f:
        head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    return identity_digest(
        {
            "format": STATE_FORMAT,
            "llama_cpp": llama_cpp.__version__,
            "model_size": st.st_size,
            "model_mtime_ns": st.st_mtime_ns,
            "model_head_sha256": head,
            "n_ctx_per_seq": n_ctx_per_seq,
            "n_gpu_layers": n_gpu_layers,
            "type_k": int(cparams.type_k),
            "type_v": int(cparams.type_v),
            "flash_attn_type": int(cparams.flash_attn_type),
            "swa_full": bool(cparams.swa_full),
            "kv_unified": bool(cparams.kv_unified),
        }
    )
