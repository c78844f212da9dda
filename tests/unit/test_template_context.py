"""The variables a Jinja chat template reads, as Hugging Face and llama.cpp pass them: each rendering
is compared with a reference rendering of the same template by plain Jinja given the same variables."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from server.errors import InvalidRequestError
from server.prompting import llama3
from server.prompting.chat_template import JinjaChatTemplate, Llama31Template, render_chat
from server.protocol import ChatCompletionRequest
from server.services.limits import check_template_kwargs
from tests.fixtures.tiny_llama3 import OFFICIAL_TEMPLATE

THINKING = (Path(__file__).parents[1] / "fixtures" / "thinking-chat.jinja").read_text()
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def reference(source: str, **variables: Any) -> str:
    """Hugging Face's rendering: plain Jinja with its options and its tojson."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env.from_string(source).render(**variables)


def test_a_llama_3_template_from_a_file_gets_todays_date() -> None:
    template = JinjaChatTemplate(OFFICIAL_TEMPLATE, bos_token="<|begin_of_text|>")
    text = template.render(CHAT)
    assert f"Today Date: {llama3.date_string()}\n" in text  # not the template's own "26 Jul 2024"
    expected = reference(
        OFFICIAL_TEMPLATE,
        messages=CHAT,
        add_generation_prompt=True,
        bos_token="<|begin_of_text|>",
        date_string=llama3.date_string(),
    )
    assert text == expected


def test_tools_date_strftime_and_bos_reach_the_template() -> None:
    template = JinjaChatTemplate(THINKING, bos_token="<s>", eos_token="</s>")
    text = template.render(CHAT, tools=[TOOL])
    expected = reference(
        THINKING, messages=CHAT, tools=[TOOL], add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
        date_string=llama3.date_string(),
    )  # fmt: skip
    assert text == expected
    assert text.startswith("<s><|im_start|>system\nToday is ") and str(dt.date.today().year) in text
    assert '"name": "get_time"' in text


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_chat_template_kwargs_reach_the_template(enable_thinking: bool) -> None:
    text = render_chat(JinjaChatTemplate(THINKING), CHAT, variables={"enable_thinking": enable_thinking})
    expected = reference(
        THINKING, messages=CHAT, add_generation_prompt=True, bos_token="", eos_token="",
        date_string=llama3.date_string(), enable_thinking=enable_thinking,
    )  # fmt: skip
    assert text == expected
    assert text.endswith("<think>\n\n</think>\n\n") is (not enable_thinking)


def test_kwargs_never_replace_what_the_server_sets() -> None:
    template = JinjaChatTemplate(THINKING, bos_token="<s>")
    assert template.render(CHAT, variables={"bos_token": "X", "messages": []}).startswith("<s><|im_start|>system")


def test_the_native_llama31_builder_reads_a_date_string_kwarg() -> None:
    text = render_chat(Llama31Template(), CHAT, variables={"date_string": "01 Jan 2030"})
    assert "Today Date: 01 Jan 2030\n" in text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": "x"}, "chat_template_kwargs.messages"),
        ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt"),
        ({"not a name": 1}, "chat_template_kwargs"),
        ({f"k{i}": i for i in range(33)}, "chat_template_kwargs"),
        ({"long": "x" * 5000}, "chat_template_kwargs.long"),
    ],
)
def test_template_kwargs_are_bounded(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_template_kwargs(kwargs)
    assert caught.value.param == param


def test_template_kwargs_hold_only_simple_values() -> None:
    base: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
    ok = ChatCompletionRequest.model_validate({**base, "chat_template_kwargs": {"a": True, "b": 1, "c": "s"}})
    assert ok.chat_template_kwargs == {"a": True, "b": 1, "c": "s"}
    for bad in ({"a": [1]}, {"a": {"b": 1}}, {"a": None}):
        with pytest.raises(ValueError):
            ChatCompletionRequest.model_validate({**base, "chat_template_kwargs": bad})
