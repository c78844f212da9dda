"""/dashboard: the operator page is public and locked down like the UI; the metrics it reads are not public."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.web import WEB_DIR
from server.engine.fake import FakeEngine
from server.settings import Settings


def test_dashboard_is_served_with_the_uis_headers_even_when_keys_are_set(engine: FakeEngine) -> None:
    with TestClient(create_app(Settings(api_keys=["sekrit"]), engine=engine)) as c:
        page = c.get("/dashboard")
        script = c.get("/dashboard.js")
        metrics = c.get("/metrics")
        keyed = c.get("/metrics", headers={"Authorization": "Bearer sekrit"})
    assert page.status_code == 200 and page.text == (WEB_DIR / "dashboard.html").read_text(encoding="utf-8")
    assert "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-cache"
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # The page loads without a key; the numbers it draws still need one.
    assert metrics.status_code == 401
    assert keyed.status_code == 200 and "llamaserve_generation_tokens_total" in keyed.text


def test_dashboard_page_has_no_inline_script_or_style() -> None:
    html = (WEB_DIR / "dashboard.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    assert '<script type="module" src="dashboard.js"></script>' in html
