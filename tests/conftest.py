from __future__ import annotations

from pathlib import Path

# Fixtures shared by several test directories.
from tests.fixtures.tiny_llama3 import tiny_llama3_gguf  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
