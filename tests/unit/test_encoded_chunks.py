"""The per-token fast path writes the very bytes the wire models would (server.services.encoded_chunks)."""

from __future__ import annotations

import json

import pytest

from server.protocol.anthropic import ContentBlockDeltaEvent, TextDelta
from server.protocol.openai import ChatCompletionChunk, ChunkChoice, ChunkDelta
from server.services.encoded_chunks import TextChunks, dumps
from server.services.pipeline import Chunk

TEXTS = ["Hello", " world", "", '"quoted" \\ back', "line\nbreak\ttab", "é ü 中文 🙂", "\x00\x1f", "</script>", "null"]


def slow(index: int, text: str) -> Chunk:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1700000000,
        model="m",
        system_fingerprint="fp",
        choices=[ChunkChoice(index=index, delta=ChunkDelta(content=text))],
    ).model_dump()
    chunk["choices"][0]["delta"] = {"content": text}
    return chunk


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 3])
def test_a_text_chunk_is_byte_for_byte_what_the_wire_models_write(index: int, text: str) -> None:
    chunks = TextChunks(slow)
    chunks.encode(index, "first")  # the template is made on the first chunk of each choice
    assert chunks.encode(index, text).json == dumps(slow(index, text))
    assert json.loads(chunks.encode(index, text).json)["choices"][0] == {
        "index": index,
        "delta": {"content": text},
        "logprobs": None,
        "finish_reason": None,
    }


def test_each_choice_gets_its_own_template() -> None:
    chunks = TextChunks(slow)
    assert json.loads(chunks.encode(0, "a").json)["choices"][0]["index"] == 0
    assert json.loads(chunks.encode(1, "b").json)["choices"][0]["index"] == 1


def test_a_render_that_does_not_carry_the_text_once_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        TextChunks(lambda i, text: {"a": text, "b": text}).encode(0, "x")
    with pytest.raises(ValueError, match="exactly once"):
        TextChunks(lambda i, text: {"a": "fixed"}).encode(0, "x")


@pytest.mark.parametrize("text", TEXTS)
def test_a_messages_text_delta_is_the_named_event_the_wire_models_write(text: str) -> None:
    def slow_delta(index: int, t: str) -> Chunk:
        return ContentBlockDeltaEvent(index=index, delta=TextDelta(text=t)).model_dump()

    chunks = TextChunks(slow_delta, event="content_block_delta")
    encoded = chunks.encode(2, text)
    assert encoded.event == "content_block_delta"
    assert encoded.json == dumps(slow_delta(2, text))
