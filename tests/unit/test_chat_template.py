"""Template selection, the sandboxed Jinja path, message normalisation, and prompts with tools."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from server.errors import InvalidRequestError
from server.prompting.chat_template import (
    CHATML,
    ChatTemplateError,
    JinjaChatTemplate,
    Llama31Template,
    normalize_messages,
    render_chat,
    select_template,
)
from server.prompting.tools import plan_tools
from tests.fixtures.tiny_llama3 import OFFICIAL_TEMPLATE

# The bundled SmolLM2's template, as its GGUF carries it.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA30 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN_LIKE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_VOCAB = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def llama3_vocab(text: str) -> bool:
    return text in LLAMA3_VOCAB


# ---- selection --------------------------------------------------------------------------------


def test_official_llama31_template_selects_the_native_builder() -> None:
    t = select_template(OFFICIAL_TEMPLATE, bos_token="<|begin_of_text|>")
    assert isinstance(t, Llama31Template)
    assert t.name == "llama-3.1" and t.bos_token == "<|begin_of_text|>" and t.tool_style == "llama3"
    assert t.render([{"role": "user", "content": "x"}]).startswith("<|begin_of_text|><|start_header_id|>system")
    # Like the official template's {{ bos_token }}: no BOS text given, none written (the tokenizer adds it).
    bare = select_template(OFFICIAL_TEMPLATE)
    assert bare.bos_token == "" and bare.render([{"role": "user", "content": "x"}]).startswith("<|start_header_id|>")


def test_llama3_vocabulary_without_template_selects_the_native_builder() -> None:
    assert isinstance(select_template(None, has_special_token=llama3_vocab), Llama31Template)
    assert select_template(None).name == "chatml"  # no template, no Llama 3 tokens


def test_other_templates_stay_jinja() -> None:
    smol = select_template(SMOLLM2, has_special_token=llama3_vocab)
    assert isinstance(smol, JinjaChatTemplate) and smol.name == "gguf" and smol.tool_style == "generic"
    # Llama 3.0 has the headers but no 3.1 date/ipython lines: its own Jinja renders it exactly.
    assert isinstance(select_template(LLAMA30, has_special_token=llama3_vocab), JinjaChatTemplate)
    assert select_template(QWEN_LIKE).tool_style == "template"


def test_override_names_and_files(tmp_path: Path) -> None:
    assert isinstance(select_template(SMOLLM2, override="llama-3.1"), Llama31Template)
    assert isinstance(select_template(SMOLLM2, override="Llama3"), Llama31Template)
    chatml = select_template(OFFICIAL_TEMPLATE, override="chatml")
    assert isinstance(chatml, JinjaChatTemplate) and chatml.source == CHATML
    f = tmp_path / "mine.jinja"
    f.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}", encoding="utf-8")
    mine = select_template(OFFICIAL_TEMPLATE, override=str(f))
    assert mine.render([{"role": "user", "content": "hi"}]) == "[user] hi\n"
    assert isinstance(
        select_template(None, override=str(tmp_path / ".." / tmp_path.name / "mine.jinja")), JinjaChatTemplate
    )


def test_gguf_template_that_does_not_compile_falls_back_to_chatml(caplog: pytest.LogCaptureFixture) -> None:
    t = select_template("{% for %}")
    assert t.name == "chatml"
    assert "does not compile" in caplog.text


def test_bad_override_is_a_clear_startup_error(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="neither a template name"):
        select_template(None, override="vicuna-9000")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for %}", encoding="utf-8")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        select_template(None, override=str(bad))


# ---- the Jinja path ---------------------------------------------------------------------------


def test_smollm2_chatml_renders() -> None:
    t = select_template(SMOLLM2)
    got = render_chat(t, [{"role": "user", "content": "Hi"}])
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sandbox_blocks_python_internals() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequestError):
        JinjaChatTemplate(evil).render([{"role": "user", "content": "x"}])
    mutate = "{{ messages.append({'role': 'x'}) }}"
    with pytest.raises(InvalidRequestError):
        JinjaChatTemplate(mutate).render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",  # writes forever
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # loops silently
    ],
)
def test_a_runaway_template_is_stopped(source: str) -> None:
    t = JinjaChatTemplate(source, render_seconds=0.05)
    with pytest.raises(InvalidRequestError, match="too long") as info:
        t.render([{"role": "user", "content": "x"}])
    assert info.value.status_code == 400
    # The limit is per render: the next one starts with a fresh budget.
    assert (
        JinjaChatTemplate("{{ messages[0].content }}", render_seconds=0.05).render([{"role": "user", "content": "ok"}])
        == "ok"
    )


def test_raise_exception_in_a_template_is_a_400() -> None:
    t = JinjaChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequestError, match="roles must alternate") as info:
        t.render([{"role": "user", "content": "x"}])
    assert info.value.status_code == 400


def test_tojson_is_hugging_face_style() -> None:
    t = JinjaChatTemplate("{{ messages[0].content | tojson }}|{{ {'a': 1} | tojson(indent=2) }}")
    assert t.render([{"role": "user", "content": "é<b>&"}]) == '"é<b>&"|{\n  "a": 1\n}'


# ---- normalisation ----------------------------------------------------------------------------


def test_normalize_messages() -> None:
    got = normalize_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": [1, 2]}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    )
    assert got[0] == {"role": "system", "content": "ab"}
    assert got[1] == {"role": "assistant", "content": ""}  # no tool_calls key: templates test for it
    assert got[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": [1, 2]}}
    assert got[3] == {"role": "tool", "content": "ok", "tool_call_id": "c1"}


def test_image_parts_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="image_url"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


# ---- prompts with tools -----------------------------------------------------------------------


def test_llama31_prompt_with_tools() -> None:
    plan = plan_tools([WEATHER], "auto", None, "llama3")
    got = render_chat(Llama31Template(date="01 Jan 2025"), [{"role": "user", "content": "Paris?"}], plan)
    assert got.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n")
    assert "Today Date: 01 Jan 2025\n\n<|eot_id|>" in got
    assert '"name": "get_weather"' in got and got.endswith(
        "Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_prompt_with_tool_choice_none_shows_no_tools() -> None:
    plan = plan_tools([WEATHER], "none", None, "llama3")
    got = render_chat(Llama31Template(date="01 Jan 2025"), [{"role": "user", "content": "Paris?"}], plan)
    assert "Environment: ipython" not in got and "get_weather" not in got


def test_generic_prompt_on_chatml_model() -> None:
    plan = plan_tools([WEATHER], "required", None, "generic")
    got = render_chat(select_template(SMOLLM2), [{"role": "user", "content": "Weather in Paris?"}], plan)
    assert got.startswith("<|im_start|>system\nYou can call these tools")
    assert "SmolLM" not in got  # our system message replaces the template's default one
    assert "You must call one of the tools now." in got
    assert got.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_template_with_tool_syntax_gets_tools_as_given() -> None:
    plan = plan_tools([WEATHER], "auto", None, "template")
    got = render_chat(select_template(QWEN_LIKE), [{"role": "user", "content": "x"}], plan)
    assert got.startswith('<|im_start|>system\n# Tools\n{"type": "function", "function": {"name": "get_weather"')


# ---- continuing the final message (assistant prefill) ------------------------------------------

PREFILL_CHAT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "The capital is "},
]


def test_the_llama31_builder_continues_a_prefill_as_the_official_template_does() -> None:
    native = render_chat(Llama31Template(date="26 Jul 2024"), PREFILL_CHAT, continue_final=True)
    official = JinjaChatTemplate(OFFICIAL_TEMPLATE, bos_token="<|begin_of_text|>")
    # Hugging Face's continue_final_message: the official rendering, cut after the (trimmed) text.
    reference = official.render(PREFILL_CHAT, add_generation_prompt=False, date_string="26 Jul 2024")
    reference = reference[: reference.rindex("The capital is") + len("The capital is")]
    assert native == reference
    assert native.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nThe capital is")


def test_a_template_that_keeps_spacing_keeps_the_prefill_trailing_space() -> None:
    text = render_chat(JinjaChatTemplate(SMOLLM2), PREFILL_CHAT, continue_final=True)
    assert text.endswith("<|im_start|>assistant\nThe capital is ")
    closed = render_chat(JinjaChatTemplate(SMOLLM2), PREFILL_CHAT, add_generation_prompt=False)
    assert closed.endswith("The capital is <|im_end|>\n")


def test_a_template_that_hides_the_final_text_cannot_continue_it() -> None:
    hides = JinjaChatTemplate("{% for m in messages %}[{{ m.role }}]{% endfor %}")
    with pytest.raises(InvalidRequestError, match="cannot be continued"):
        render_chat(hides, PREFILL_CHAT, continue_final=True)


# ---- named templates (llama.cpp's, given by the engine layer) ------------------------------------


class TwoNames:
    """A stand-in for llama.cpp's named templates: records what it was asked to render."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], bool]] = []

    def names(self) -> frozenset[str]:
        return frozenset({"gemma", "llama3"})

    def apply(self, name: str, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        self.calls.append((name, list(messages), add_generation_prompt))
        body = "".join(f"<{r}>{c}</{r}>" for r, c in messages)
        return body + ("<model>" if add_generation_prompt else "")


def test_a_name_llama_cpp_knows_renders_through_it_with_tools_as_text() -> None:
    named = TwoNames()
    template = select_template(None, override="Gemma", named=named)
    assert template.name == "gemma" and template.tool_style == "generic"
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    plan = plan_tools([tool], "auto", None, template.tool_style)
    text = render_chat(template, [{"role": "user", "content": "Hi"}], plan)
    assert text.endswith("<user>Hi</user><model>")
    assert "get_time" in named.calls[0][1][0][1]  # the tools reach it as text in the system turn
    prefill = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    assert render_chat(template, prefill, continue_final=True).endswith("<assistant>Hel")


def test_our_names_win_over_llama_cpp_s() -> None:
    assert isinstance(select_template(None, override="llama3", named=TwoNames()), Llama31Template)
    with pytest.raises(ChatTemplateError, match="gemma"):
        select_template(None, override="gemma-7", named=TwoNames())
