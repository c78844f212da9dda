"""web/ served at "/": cache and security headers, no escape from web/, the API keeps its own answers."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.web import WEB_DIR
from server.engine.fake import FakeEngine
from server.settings import Settings


@pytest.fixture
def web(engine: FakeEngine) -> TestClient:
    return TestClient(create_app(Settings(), engine=engine))


UI_FILES = ["/", *sorted(f"/{f.name}" for f in WEB_DIR.iterdir() if f.is_file())]


def test_the_ui_is_all_there() -> None:
    assert {"/index.html", "/app.js", "/style.css", "/markdown.js"} <= set(UI_FILES)


@pytest.mark.parametrize("path", UI_FILES)
def test_ui_files_are_served_with_cache_and_security_headers(web: TestClient, path: str) -> None:
    with web:
        r = web.get(path)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["etag"]
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    expected_type = {"js": "javascript", "css": "text/css"}.get(path.rsplit(".", 1)[-1], "text/html")
    assert expected_type in r.headers["content-type"]


def test_root_is_the_index_page(web: TestClient) -> None:
    with web:
        assert web.get("/").text == (WEB_DIR / "index.html").read_text(encoding="utf-8")


def test_etag_revalidation_answers_304(web: TestClient) -> None:
    with web:
        first = web.get("/app.js")
        again = web.get("/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "raw_path",
    [b"/../server/app.py", b"/%2e%2e/server/app.py", b"/..%2fserver%2fapp.py", b"/%2e%2e%2fpyproject.toml"],
)
def test_nothing_outside_web_can_be_read(web: TestClient, raw_path: bytes) -> None:
    # Send the path exactly as given, past the client's own normalisation.
    with web:
        r = web.request("GET", "http://testserver" + raw_path.decode())
    assert r.status_code == 404
    assert "create_app" not in r.text and "[project]" not in r.text


def test_html_has_no_inline_script_or_handlers() -> None:
    # The CSP forbids inline script, so any inline script or on* attribute would be dead code.
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "http://" not in html and "https://" not in html  # nothing from the network


def test_no_inline_style_attributes() -> None:
    # style-src 'self' drops a style attribute written in the HTML or set as an attribute by script
    # (the UI styles through classes, and sizes through the CSSOM, element.style, which it allows).
    assert not re.search(r"\sstyle\s*=", (WEB_DIR / "index.html").read_text(encoding="utf-8"))
    for script in WEB_DIR.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"""setAttribute\(\s*["']style|style=\\?["']""", text), script.name


def test_api_answers_are_unchanged_by_the_mount(web: TestClient) -> None:
    with web:
        wrong_method = web.get("/v1/chat/completions")
        unknown_post = web.post("/v1/nope", json={})
        unknown_get = web.get("/v1/nope")
        health = web.get("/health")
    assert wrong_method.status_code == 405
    assert unknown_post.status_code == 404
    assert unknown_get.status_code == 404
    assert unknown_get.json()["error"]["message"] == "Unknown route: GET /v1/nope"
    assert health.status_code == 200
    assert "content-security-policy" not in health.headers  # UI headers stay on UI files
