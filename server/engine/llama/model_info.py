"""What /v1/models and the startup log say about a loaded model: :class:`ModelInfo` from llama.cpp."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from server.engine.base import ModelInfo
from server.engine.llama.vocab import Vocab

# Metadata values that are whole vocabularies: useless in /v1/models and huge.
_BULKY_METADATA = frozenset(
    {
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
    }
)


def read_model_info(
    model: Any, ctx: Any, vocab: Vocab, *, path: str, model_id: str, n_ctx_per_seq: int, n_slots: int, n_batch: int
) -> ModelInfo:
    """The info of ``model`` served by ``ctx`` (whose size sets the KV-cache bytes)."""
    arch = meta_value(model, "general.architecture") or "unknown"
    template = llama_cpp.llama_model_chat_template(model, None)
    return ModelInfo(
        id=model_id,
        path=path,
        n_ctx_per_seq=n_ctx_per_seq,
        n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(model)),
        n_vocab=vocab.n_tokens,
        n_slots=n_slots,
        n_batch=n_batch,
        bos_token=vocab.bos,
        eos_token=vocab.eos,
        chat_template=template.decode("utf-8", "replace") if template else None,
        eog_tokens=vocab.eog_tokens(),
        architecture=arch,
        quantization=_quantization(model),
        kv_cache_bytes=_kv_cache_bytes(model, ctx, arch),
        metadata=_all_metadata(model),
    )


def meta_value(model: Any, key: str) -> str | None:
    """One GGUF metadata value as text; None when the file has no such key."""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", "replace")
        size = n + 1


def _all_metadata(model: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(int(llama_cpp.llama_model_meta_count(model))):
        kbuf = ctypes.create_string_buffer(256)
        if llama_cpp.llama_model_meta_key_by_index(model, i, kbuf, 256) < 0:
            continue
        key = kbuf.value.decode("utf-8", "replace")
        if key in _BULKY_METADATA:
            continue
        vbuf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_model_meta_val_str_by_index(model, i, vbuf, 1024)
        if n >= 0:
            out[key] = vbuf.value.decode("utf-8", "replace")
    return out


def _kv_cache_bytes(model: Any, ctx: Any, arch: str) -> int:
    def meta_int(key: str) -> int | None:
        raw = meta_value(model, f"{arch}.{key}")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    n_layer = int(llama_cpp.llama_model_n_layer(model))
    n_embd = meta_int("embedding_length") or int(llama_cpp.llama_model_n_embd(model))
    n_head = meta_int("attention.head_count") or int(llama_cpp.llama_model_n_head(model)) or 1
    n_head_kv = meta_int("attention.head_count_kv") or n_head
    k_dim = meta_int("attention.key_length") or n_embd // n_head
    v_dim = meta_int("attention.value_length") or n_embd // n_head
    n_ctx_total = int(llama_cpp.llama_n_ctx(ctx))
    # f16 K and V (the default cache type) for every cell of every layer.
    return n_ctx_total * n_layer * (k_dim + v_dim) * n_head_kv * 2


def _quantization(model: Any) -> str:
    ftype_name = llama_cpp.llama_ftype_name(llama_cpp.llama_model_ftype(model))
    return ftype_name.decode() if ftype_name else meta_value(model, "general.file_type") or "unknown"
