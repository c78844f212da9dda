"""API keys and the request body limit, as one pure-ASGI middleware.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: the latter re-wraps
every response in memory streams inside a task group, a layer with a history of
buffering streamed bodies and hiding ``http.disconnect`` from the SSE response.
Here the app's own ``receive`` and ``send`` pass straight through: ``receive``
only counts the body bytes, and ``send`` is held back only once the body limit
has been passed, so that the client gets one clean 413.

Keys are compared in constant time against every configured key (no early
exit on the first match), after hashing both sides to one length, so neither
the position of a matching key nor a shared prefix shows in the timing.

The matched key travels on as a :class:`~server.services.pipeline.Caller` in the
request's ASGI state (``request.state.caller``): its short id (:func:`key_id`, a hash:
the key itself goes no further than this module) and its default priority, for the
scheduler's fair share between keys.

Errors are raised as :mod:`server.errors` types; turning them into HTTP is the
job of the ``render_error`` callable that :mod:`server.api.app` passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from server.errors import AuthenticationError, InvalidRequestError, LlamaserveError, RequestTooLargeError
from server.services.pipeline import ANONYMOUS, Caller
from server.settings import ConfigError, Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ErrorRenderer = Callable[[LlamaserveError], ASGIApp]

# Routes anyone may call even when keys are set: the load balancer's and the kubelet's probes.
PUBLIC_ROUTES = frozenset({"/health", "/health/ready", "/health/live"})

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY) or in an x-api-key header."
)
WRONG_KEY_MESSAGE = "Incorrect API key provided."


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname could resolve anywhere


def ui_public_paths(web_dir: Path, mount: str = "/") -> frozenset[str]:
    """The URL paths of the static UI's files, which browsers load before they could send a key."""
    prefix = mount.rstrip("/")
    paths: set[str] = set()
    if web_dir.is_dir():
        for file in web_dir.rglob("*"):
            if not file.is_file():
                continue
            rel = file.relative_to(web_dir).as_posix()
            paths.add(f"{prefix}/{rel}")
            if file.name == "index.html":
                parent = file.parent.relative_to(web_dir).as_posix()
                paths.add(f"{prefix}/" if parent == "." else f"{prefix}/{parent}/")
    return frozenset(paths)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def key_id(key: str) -> str:
    """A key's stable short id for metrics and scheduling: 12 hex digits of its SHA-256, never the key."""
    return _digest(key.encode("utf-8")).hex()[:12]


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once the streamed body passes the limit."""


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class SecurityMiddleware:
    """Checks the API key, then the body size (header and streamed), then calls the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Iterable[str],
        max_body_bytes: int,
        render_error: ErrorRenderer,
        public_paths: Iterable[str] = (),
        key_priorities: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        # Each key once, so that at most one digest matches (the match arithmetic below relies on it).
        self._key_digests = list(dict.fromkeys(_digest(k.encode("utf-8")) for k in api_keys))
        priorities = key_priorities or {}
        self._callers = [Caller(d.hex()[:12], priorities.get(d.hex()[:12], 0)) for d in self._key_digests]
        self.max_body_bytes = max_body_bytes
        self.render_error = render_error
        self.public_paths = PUBLIC_ROUTES | frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        caller = self._check_key(scope)
        error = caller if isinstance(caller, AuthenticationError) else self._check_declared_length(scope)
        if isinstance(caller, Caller):
            scope.setdefault("state", {})["caller"] = caller
        if error is not None:
            await self.render_error(error)(scope, _no_receive, send)
            return
        if self.max_body_bytes <= 0:
            await self.app(scope, receive, send)
            return
        await self._call_with_body_limit(scope, receive, send)

    # ---- API keys -----------------------------------------------------------------------------

    def _check_key(self, scope: Scope) -> Caller | AuthenticationError:
        """Who is calling (the anonymous caller when no keys are set), or why not."""
        if not self._key_digests:
            return ANONYMOUS
        if scope["method"] in ("GET", "HEAD") and scope["path"] in self.public_paths:
            return ANONYMOUS
        presented = self._presented_key(scope["headers"])
        if presented is None:
            return AuthenticationError(MISSING_KEY_MESSAGE)
        digest = _digest(presented)
        matched = -1
        for i, known in enumerate(self._key_digests):  # every key, every time: no early exit, no branch
            matched += (i + 1) * hmac.compare_digest(digest, known)
        if matched < 0:
            log.info("rejected a request to %s with a wrong API key", scope["path"])
            return AuthenticationError(WRONG_KEY_MESSAGE)
        return self._callers[matched]

    @staticmethod
    def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and credentials.strip():
                    return credentials.strip()
            elif name == b"x-api-key" and value.strip():
                return value.strip()
        return None

    # ---- body size ----------------------------------------------------------------------------

    def _check_declared_length(self, scope: Scope) -> LlamaserveError | None:
        if self.max_body_bytes <= 0:
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return InvalidRequestError("The Content-Length header is not a number.")
                if declared > self.max_body_bytes:
                    return RequestTooLargeError(self.max_body_bytes)
        return None

    async def _call_with_body_limit(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A chunked body declares no length, so the bytes are counted as they arrive. Once over,
        # ``receive`` raises; whatever the app answers to that is dropped in favour of one 413.
        limit = self.max_body_bytes
        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await self.render_error(RequestTooLargeError(limit))(scope, _no_receive, send)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no API key, unless told the network is trusted."""
    if settings.api_keys or is_loopback(settings.host):
        return
    if not settings.allow_unauthenticated:
        raise ConfigError(
            f"Refusing to listen on {settings.host} without an API key: anyone who can reach that address "
            "could use the model. Give --api-key KEY (or --api-key-file FILE), bind --host 127.0.0.1, or pass "
            "--allow-unauthenticated if the network is trusted."
        )
    log.warning(
        "serving %s WITHOUT authentication (--allow-unauthenticated): anyone who can reach it can use the model",
        settings.host,
    )
