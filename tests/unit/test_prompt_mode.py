"""-p: one completion through the real scheduler, written to the given stream (fake engine)."""

from __future__ import annotations

import io

import pytest

from server.cli.prompt import PromptOptions, run_prompt
from server.engine.base import Engine
from server.engine.fake import FakeEngine
from server.errors import ContextLengthExceededError
from server.settings import Settings


def echo_factory(built: list[Settings]) -> object:
    def factory(s: Settings) -> Engine:
        built.append(s)
        return FakeEngine(reply=lambda prompt: f"<{prompt}>", n_ctx_per_seq=s.ctx_size, n_slots=s.parallel)

    return factory


def complete(settings: Settings, **options: object) -> tuple[str, list[Settings]]:
    built: list[Settings] = []
    out = io.StringIO()
    run_prompt(settings, PromptOptions.model_validate(options), engine_factory=echo_factory(built), out=out)  # type: ignore[arg-type]
    return out.getvalue(), built


def test_prints_only_the_completion() -> None:
    text, built = complete(Settings(ctx_size=256, parallel=4), prompt="four score and seven")
    assert text == "<four score and seven>"  # the fake replies with what the model was given
    assert built[0].parallel == 1  # one completion needs one slot


def test_n_predict_limits_the_tokens() -> None:
    text, _ = complete(Settings(ctx_size=256), prompt="abcdef", n_predict=4)
    assert text == "<abc"  # the fake engine: one byte, one token
    assert complete(Settings(ctx_size=256), prompt="abc", n_predict=0)[0] == ""


def test_chat_applies_the_template() -> None:
    text, _ = complete(Settings(ctx_size=256), prompt="Hi", chat=True)
    assert text == "<<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n>"


def test_chat_template_setting_is_used() -> None:
    text, _ = complete(Settings(ctx_size=512, chat_template="llama-3.1"), prompt="Hi", chat=True)
    assert "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" in text


def test_prompt_longer_than_the_context_is_refused() -> None:
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 16 tokens"):
        complete(Settings(ctx_size=16), prompt="x" * 40)
