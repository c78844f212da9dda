"""``--chat-template NAME`` for the names llama.cpp knows, rendered by llama.cpp, on the bundled SmolLM2."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.llama.chat_builtin import LlamaNamedTemplates
from server.settings import Settings

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_every_builtin_name_llama_cpp_lists_renders() -> None:
    named = LlamaNamedTemplates()
    names = named.names()
    assert {"gemma", "mistral-v7", "llama2", "deepseek3", "phi3", "zephyr"} <= names and len(names) > 30
    for name in sorted(names):
        assert "Hi" in named.apply(name, [("user", "Hi")], True), name


def test_a_named_template_serves_chat_and_apply_template(smollm2_path: str) -> None:
    settings = Settings(model=smollm2_path, chat_template="gemma", parallel=1, ctx_size=512)
    with TestClient(create_app(settings)) as c:
        for _ in range(600):
            if c.get("/health").status_code == 200:
                break
        prompt = c.post("/apply-template", json={"messages": MESSAGES}).json()["prompt"]
        assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        body = {"messages": MESSAGES, "max_tokens": 4, "temperature": 0}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
