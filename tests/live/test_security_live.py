"""Security over real sockets: no file outside web/ is ever served, whatever the path's spelling (raw
request lines, because HTTP clients normalise ``/../`` away), the UI's pages carry the security
headers, and an oversized body is refused with a 413 the client can read."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.helpers.live import live_server

pytestmark = pytest.mark.live

TRAVERSALS = [
    "/../pyproject.toml",
    "/../../../../etc/passwd",
    "/%2e%2e/pyproject.toml",  # encoded
    "/%2e%2e%2fpyproject.toml",
    "/..%2fpyproject.toml",
    "/%252e%252e/pyproject.toml",  # double-encoded
    "/%252e%252e%252fpyproject.toml",
    "/..%c0%afpyproject.toml",  # overlong UTF-8 slash
    "/..\\pyproject.toml",
    "/./../server/app.py",
    "/index.html/../../pyproject.toml",
    "//etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
]
SECRETS = (b"[build-system]", b"root:", b"create_app")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(create_app(Settings(), engine=FakeEngine(n_slots=1))) as u:
        yield u


def raw_get(url: str, path: str) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_reaches_outside_web(url: str, path: str) -> None:
    response = raw_get(url, path)
    status = response.split(b"\r\n", 1)[0]
    # The UI mount answers every path it finds no file for inside web/ with the API's 404.
    assert status.split()[1] == b"404", status
    assert not any(secret in response for secret in SECRETS)


def test_ui_pages_carry_security_headers(url: str) -> None:
    r = httpx.get(f"{url}/", timeout=10)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_a_10_mb_body_is_413_over_a_real_socket_declared_or_chunked(url: str) -> None:
    body = b'{"messages":[{"role":"user","content":"' + b"a" * 10_000_000 + b'"}]}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    for content in (body, chunks()):
        r = httpx.post(
            f"{url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}, timeout=60
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
