"""A fake engine that remembers what it was asked to generate from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.engine.base import SamplingParams
from server.engine.fake import FakeEngine


class RecordingEngine(FakeEngine):
    """The fake engine, remembering each prompt (as text) and its sampling settings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def begin(self, slot: int, prompt: Sequence[int], params: SamplingParams) -> int:
        self.prompts.append(bytes(t for t in prompt if t < 256).decode("utf-8", errors="replace"))
        self.params.append(params)
        return super().begin(slot, prompt, params)
