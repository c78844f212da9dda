"""Splitting ``<think>...</think>`` from a reply, token by token: any tokenization gives the same split."""

from __future__ import annotations

import pytest

from server.services.reasoning import ReasoningSplitter, opens_thinking, split_all

REPLY = "<think>\nThe capital of France...\nis Paris.\n</think>\n\nParis."


def tokenizations(text: str) -> list[list[str]]:
    """The same text cut into 1-, 2-, 3- and 7-character tokens, and as one piece."""
    return [[text[i : i + n] for i in range(0, len(text), n)] for n in (1, 2, 3, 7)] + [[text]]


@pytest.mark.parametrize("tokens", tokenizations(REPLY), ids=["1", "2", "3", "7", "whole"])
def test_the_split_is_the_same_however_the_reply_is_tokenized(tokens: list[str]) -> None:
    assert split_all(ReasoningSplitter(), tokens) == ("The capital of France...\nis Paris.", "Paris.")


@pytest.mark.parametrize("tokens", tokenizations("  Just an answer <think> in the middle"), ids=str)
def test_a_reply_that_does_not_start_with_think_is_all_content(tokens: list[str]) -> None:
    assert split_all(ReasoningSplitter(), tokens) == (None, "  Just an answer <think> in the middle")


def test_a_template_that_opens_the_thinking_starts_the_reply_inside_it() -> None:
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n")
    tokens = ["Hmm", ",", " Paris", ".\n", "</think>", "\n\n", "Paris", "."]
    assert split_all(ReasoningSplitter(open_at_start=True), tokens) == ("Hmm, Paris.", "Paris.")


def test_an_unclosed_thinking_is_all_reasoning() -> None:
    assert split_all(ReasoningSplitter(), ["<think>", "Still", " thinking", " </th"]) == ("Still thinking </th", "")


def test_held_text_that_never_becomes_a_tag_is_released() -> None:
    assert split_all(ReasoningSplitter(), ["<th", "ing"]) == (None, "<thing")
    splitter = ReasoningSplitter()
    assert splitter.push("<thi") == []  # may still be <think>
    assert splitter.push("nk>Why") == [("reasoning", "Why")]


def test_reasoning_tokens_count_the_thinking_and_its_tags() -> None:
    splitter = ReasoningSplitter()
    tokens = ["<think>", "a", " b", "</think>", "\n", "c", "d"]
    split_all(splitter, tokens)
    assert splitter.reasoning_tokens == 4
    plain = ReasoningSplitter()
    split_all(plain, ["no", " thinking"])
    assert plain.reasoning_tokens == 0
    forced = ReasoningSplitter(open_at_start=True)
    split_all(forced, ["a", "</think>", "b"])
    assert forced.reasoning_tokens == 2
