"""API keys, CORS and the body size limit, in-process (server/api/security.py)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from server.api.app import create_app
from server.api.security import is_loopback
from server.engine.fake import FakeEngine
from server.settings import Settings

KEYS = ["sk-first-key", "sk-second-key", "sk-third-key"]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _client(**settings: object) -> TestClient:
    engine = FakeEngine(reply=lambda p: "Hello there", n_slots=2, n_ctx_per_seq=512)
    return TestClient(create_app(Settings(**settings), engine=engine))  # type: ignore[arg-type]


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    with _client(api_keys=KEYS) as c:
        yield c


def assert_openai_error(body: object, status: int, response_status: int) -> dict[str, object]:
    assert response_status == status
    assert isinstance(body, dict) and set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err  # type: ignore[no-any-return]


# ---- API keys ------------------------------------------------------------------------------------


def test_no_keys_configured_means_no_auth() -> None:
    with _client() as c:
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_missing_key_is_401_in_openai_shape_with_www_authenticate(keyed: TestClient) -> None:
    r = keyed.get("/v1/models")
    err = assert_openai_error(r.json(), 401, r.status_code)
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert "API key" in str(err["message"])
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": "Bearer sk-first-key-and-more"},  # a valid key as a prefix is not a match
        {"Authorization": "Bearer sk-first-ke"},
        {"Authorization": "Basic c2stZmlyc3Qta2V5"},  # the right key in the wrong scheme
        {"Authorization": "sk-first-key"},
        {"x-api-key": "sk-nope"},
    ],
)
def test_wrong_keys_are_refused_without_echoing_them(keyed: TestClient, headers: dict[str, str]) -> None:
    r = keyed.post("/v1/chat/completions", json=CHAT, headers=headers)
    err = assert_openai_error(r.json(), 401, r.status_code)
    assert "sk-" not in str(err["message"])
    assert "www-authenticate" in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-first-key"},
        {"Authorization": "bearer sk-third-key"},
        {"Authorization": "Bearer   sk-second-key  "},
        {"x-api-key": "sk-second-key"},
        {"X-Api-Key": "sk-third-key"},
    ],
)
def test_any_configured_key_in_either_header_is_accepted(keyed: TestClient, headers: dict[str, str]) -> None:
    r = keyed.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hell"


def test_the_openai_sdk_sends_its_key_as_bearer(keyed: TestClient) -> None:
    good = OpenAI(base_url="http://testserver/v1", api_key="sk-second-key", http_client=keyed, max_retries=0)
    assert good.models.list().data[0].id == "fake-model"
    bad = OpenAI(base_url="http://testserver/v1", api_key="sk-bad", http_client=keyed, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"


def test_health_and_the_ui_files_are_public_everything_else_is_not(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    index = keyed.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert keyed.get("/index.html").status_code == 200
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/v1/models/fake-model", "/no-such-file.js"):
        assert keyed.get(path).status_code == 401, path
    # Only reading /health is public: another method there still needs the key.
    assert keyed.post("/health").status_code == 401
    # A path that starts like a UI file but climbs out of it is not on the public list: the key is
    # asked for before the static files could answer 404. (The dots are percent-encoded because
    # the client would remove plain ones; the server decodes them, so it sees the "..".)
    for path in ("/index.html/%2e%2e/%2e%2e/server/settings.py", "/%2e%2e/web/index.html"):
        assert keyed.get(path).status_code == 401, path


def test_every_key_is_compared_in_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("server.api.security.hmac.compare_digest", spy)
    # The first key matches, yet all three are still compared: no early exit reveals which one matched.
    assert keyed.get("/v1/models", headers={"Authorization": "Bearer sk-first-key"}).status_code == 200
    assert len(calls) == len(KEYS)
    assert len({len(a) for a, _ in calls} | {len(b) for _, b in calls}) == 1  # one length, whatever the key


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.9.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    assert not is_loopback("::")


# ---- CORS ----------------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": "http://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_cors_is_off_by_default() -> None:
    with _client() as c:
        r = c.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = c.options("/v1/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in pre.headers


def test_cors_allows_only_the_listed_origins() -> None:
    with _client(cors_origins=["http://app.example"], api_keys=KEYS) as c:
        pre = c.options("/v1/chat/completions", headers=PREFLIGHT)  # no key: preflights carry none
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        other = c.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.example"})
        # Refused as the CORS spec intends: a 200 that grants nothing, so the browser refuses the call.
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        assert "access-control-allow-credentials" not in other.headers
        # A 401 still carries the CORS header, so the page can read the error.
        r = c.get("/v1/models", headers={"Origin": "http://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.get("/v1/models", headers={"Origin": "http://evil.example", "x-api-key": KEYS[0]})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_star_only_when_asked() -> None:
    with _client(cors_origins=["*"]) as c:
        r = c.get("/v1/models", headers={"Origin": "http://anything.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        bad = c.options("/v1/models", headers={**PREFLIGHT, "Access-Control-Request-Method": "PATCH"})
        assert bad.status_code == 200 and "access-control-allow-origin" not in bad.headers  # not even '*'


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:5173", True),
        ("http://localhost", True),
        ("https://127.0.0.1:8443", True),
        ("http://127.0.0.2:3000", True),
        ("http://[::1]:8000", True),
        ("http://localhost.evil.example", False),
        ("http://evil.example:5173", False),
        ("http://127.0.0.1.evil.example", False),
        ("file://localhost", False),
    ],
)
def test_cors_localhost_means_any_loopback_origin_on_any_port(origin: str, allowed: bool) -> None:
    with _client(cors_origins=["localhost", "https://app.example"]) as c:
        pre = c.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": origin})
        assert pre.status_code == 200
        assert pre.headers.get("access-control-allow-origin") == (origin if allowed else None)
        r = c.get("/v1/models", headers={"Origin": origin})
        assert r.headers.get("access-control-allow-origin") == (origin if allowed else None)
        assert c.get("/v1/models", headers={"Origin": "https://app.example"}).headers["access-control-allow-origin"]


def test_cors_credentials_only_when_asked_and_delete_is_allowed() -> None:
    delete = {**PREFLIGHT, "Access-Control-Request-Method": "DELETE"}
    with _client(cors_origins=["http://app.example"]) as c:
        plain = c.options("/v1/models", headers=delete)
        assert plain.headers["access-control-allow-origin"] == "http://app.example"
        assert "DELETE" in plain.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in plain.headers
    with _client(cors_origins=["http://app.example"], cors_credentials=True) as c:
        pre = c.options("/v1/models", headers=delete)
        assert pre.headers["access-control-allow-credentials"] == "true"
        r = c.get("/v1/models", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-origin"] == "http://app.example"  # never '*' with credentials


# ---- body size -----------------------------------------------------------------------------------


def _big_chat(size: int) -> bytes:
    return b'{"messages":[{"role":"user","content":"' + b"a" * size + b'"}],"max_tokens":2}'


def test_declared_body_over_the_limit_is_413_and_the_server_goes_on() -> None:
    with _client(max_body_bytes=10_000) as c:
        r = c.post("/v1/chat/completions", content=_big_chat(20_000), headers={"content-type": "application/json"})
        err = assert_openai_error(r.json(), 413, r.status_code)
        assert err["code"] == "request_too_large" and "10000" in str(err["message"])
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_streamed_body_without_length_is_counted_too() -> None:
    body = _big_chat(50_000)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    with _client(max_body_bytes=10_000) as c:
        r = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers  # really chunked: only the count can catch it
        err = assert_openai_error(r.json(), 413, r.status_code)
        assert err["code"] == "request_too_large"
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_default_limit_is_4_mib() -> None:
    with _client() as c:
        r = c.post("/v1/chat/completions", content=_big_chat(4 * 2**20), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/chat/completions", content=_big_chat(200_000), headers={"content-type": "application/json"})
        assert r.status_code != 413


def test_key_is_checked_before_the_body_is_read() -> None:
    with _client(api_keys=KEYS, max_body_bytes=1000) as c:
        r = c.post("/v1/chat/completions", content=_big_chat(5000), headers={"content-type": "application/json"})
        assert r.status_code == 401


# ---- exposure ------------------------------------------------------------------------------------


def test_a_non_loopback_host_without_keys_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli.main import main

    assert main(["--host", "0.0.0.0", "--port", "0", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "Refusing to listen on 0.0.0.0 without an API key" in err and "--allow-unauthenticated" in err


def test_exposure_rules(caplog: pytest.LogCaptureFixture) -> None:
    from server.api.security import check_exposure
    from server.settings import ConfigError

    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="0.0.0.0", api_keys=["k"]))
    with pytest.raises(ConfigError):
        check_exposure(Settings(host="192.168.1.10"))
    with caplog.at_level("WARNING", logger="server.api.security"):
        check_exposure(Settings(host="0.0.0.0", allow_unauthenticated=True))
    assert "WITHOUT authentication" in caplog.text


def test_metrics_public_opens_metrics_alone_to_a_scraper_without_a_key() -> None:
    closed = create_app(Settings(api_keys=["sk-1"]), engine=FakeEngine())
    opened = create_app(Settings(api_keys=["sk-1"], metrics_public=True), engine=FakeEngine())
    with TestClient(closed) as c:
        assert c.get("/metrics").status_code == 401
    with TestClient(opened) as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and "llamaserve_requests_waiting" in r.text
        assert c.get("/v1/models").status_code == 401  # everything else still needs the key
