"""Small GGUF files written with the ``gguf`` package, for tests of the checks made before loading."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_header_only_gguf(
    path: Path,
    *,
    context_length: int = 4096,
    block_count: int = 2,
    embedding_length: int = 64,
    head_count: int = 4,
    head_count_kv: int = 2,
    tensors: int = 1,
) -> Path:
    """A GGUF with llama metadata and ``tensors`` small f32 tensors: readable, not runnable."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    writer.add_block_count(block_count)
    writer.add_embedding_length(embedding_length)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(head_count_kv)
    for i in range(tensors):
        writer.add_tensor(f"t{i}", np.arange(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_split_copy(source: Path, out_dir: Path, stem: str, *, max_tensors: int) -> list[Path]:
    """Rewrite ``source`` as a split model (``stem-0000N-of-0000M.gguf``), as llama.cpp's gguf-split does."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(out_dir / f"{stem}.gguf", arch, split_max_tensors=max_tensors)
    for key, f in reader.fields.items():
        if key.startswith(("GGUF.", "split.")) or key == "general.architecture":
            continue  # the writer sets these itself
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), vtype, sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(out_dir.glob(f"{stem}-*-of-*.gguf"))
