"""--api-key-file: the keys in the file are the keys the server accepts."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import load


def test_keys_from_the_file_are_accepted_and_others_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nsk-from-file\n")
    app = create_app(load({"api_key_file": str(keys)}), engine=FakeEngine())
    with TestClient(app) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
        ok = client.get("/v1/models", headers={"Authorization": "Bearer sk-from-file"})
        assert ok.status_code == 200, ok.text
