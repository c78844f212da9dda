"""POST /tokenize and /detokenize: our extension, in llama.cpp server's shapes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.engine.fake import BOS


def test_tokenize_and_back(client: TestClient) -> None:
    r = client.post("/tokenize", json={"content": "héllo"})
    assert r.status_code == 200
    tokens = r.json()["tokens"]
    assert tokens == list("héllo".encode())  # the FakeEngine's tokens are bytes
    r = client.post("/detokenize", json={"tokens": tokens})
    assert r.json() == {"content": "héllo"}


def test_tokenize_options(client: TestClient) -> None:
    r = client.post("/tokenize", json={"content": "ab", "add_special": True})
    assert r.json()["tokens"] == [BOS, ord("a"), ord("b")]
    r = client.post("/tokenize", json={"content": "ab", "with_pieces": True})
    assert r.json()["tokens"] == [{"id": ord("a"), "piece": "a"}, {"id": ord("b"), "piece": "b"}]


def test_tokenize_errors_are_openai_shaped(client: TestClient) -> None:
    r = client.post("/tokenize", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"
    r = client.post("/detokenize", json={"tokens": [1, 100000]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = client.post("/tokenize", json={"content": "x", "model": "other"})
    assert r.status_code == 200  # the only model answers any name (tests/api/test_model_names.py)
    assert client.get("/tokenize").status_code == 405
