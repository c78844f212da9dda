"""The web UI's static files (web/ beside server/), with strict security headers."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Match
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
# Pages served at a path of their own (public, like the files: the page asks for the key it needs).
PAGES = {"/dashboard": "dashboard.html"}

# The UI has no inline script or style and talks only to this server, so the policy can be strict:
# even markup that slipped past the Markdown renderer's escaping could not run or load anything.
WEB_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebFiles(StaticFiles):
    """web/: revalidated on every load (no-cache + the ETag StaticFiles sets), so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        # Mounted at "/", this sees every request that no API route fully matched. Keep the API's own
        # answers there: 405 for a wrong method on an API path, 404 for a POST to an unknown one.
        if any(route.matches(scope)[0] is Match.PARTIAL for route in scope["router"].routes):
            raise StarletteHTTPException(status_code=405)
        if scope["method"] not in ("GET", "HEAD"):
            raise StarletteHTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(WEB_HEADERS)
        return response


async def page(request: Request) -> Response:
    """A page of :data:`PAGES` (``/dashboard``), with the same headers as every file of the UI."""
    return FileResponse(WEB_DIR / PAGES[request.url.path], headers=WEB_HEADERS)
