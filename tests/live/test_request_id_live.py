"""Over real sockets, uvicorn's own access log lines carry the request id (JSON log format)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.ops.logs import make_handler
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live


@contextmanager
def access_log() -> Iterator[io.StringIO]:
    """Capture uvicorn's access log as JSON lines; call it after uvicorn configured its loggers."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logger = logging.getLogger("uvicorn.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # live_server runs uvicorn at warning
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_access_log_lines_carry_the_request_id() -> None:
    with live_server(create_app(Settings(), engine=FakeEngine())) as url, access_log() as lines:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        ours = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"X-Request-Id": "live-7"}, timeout=30)
        generated = httpx.post(f"{url}/v1/chat/completions", json={"messages": "bad"}, timeout=30)
    assert ours.headers["x-request-id"] == "live-7"
    assert generated.status_code == 400
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    by_id = {r["request_id"]: r["message"] for r in records}
    assert "live-7" in by_id and by_id["live-7"].endswith('"POST /v1/chat/completions HTTP/1.1" 200')
    assert by_id[generated.headers["x-request-id"]].endswith('"POST /v1/chat/completions HTTP/1.1" 400')
