"""CORS as llama-server's browser clients expect it, on Starlette's middleware.

Three differences from Starlette's defaults, each what the CORS spec or llama-server does:
- ``localhost`` among the origins means any loopback origin on any port (``http://localhost:5173``,
  ``http://127.0.0.1:3000``, ``http://[::1]:8000``): a dev server's port changes, the host does not;
- a preflight the policy refuses is a 200 without ``Access-Control-Allow-Origin``: the browser then
  refuses the request itself (a 400 tells the page nothing more, and some clients treat it as an outage);
- credentials (cookies, HTTP auth) only with ``--cors-credentials``.
"""

from __future__ import annotations

from typing import TypedDict

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response

from server.settings import Settings

LOOPBACK_ORIGIN = r"https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?"
METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
HEADERS = ["Authorization", "Content-Type", "X-Api-Key", "X-Request-Id"]
EXPOSED = ["Retry-After", "X-Request-Id"]
_GRANTS = ("access-control-allow-origin", "access-control-allow-credentials")


class LenientPreflightCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, but a refused preflight is a 200 that grants nothing (see the module docstring)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in _GRANTS and k != "content-length"}
        return PlainTextResponse("CORS preflight refused", status_code=200, headers=headers)


class CORSOptions(TypedDict):
    allow_origins: list[str]
    allow_origin_regex: str | None
    allow_credentials: bool
    allow_methods: list[str]
    allow_headers: list[str]
    expose_headers: list[str]


def cors_options(settings: Settings) -> CORSOptions:
    """The middleware's keyword arguments for ``--cors-origin`` and ``--cors-credentials``."""
    origins = settings.cors_origins
    return {
        "allow_origins": ["*"] if "*" in origins else [o for o in origins if o != "localhost"],
        "allow_origin_regex": LOOPBACK_ORIGIN if "localhost" in origins else None,
        "allow_credentials": settings.cors_credentials,
        "allow_methods": METHODS,
        "allow_headers": HEADERS,
        "expose_headers": EXPOSED,
    }
