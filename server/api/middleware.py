"""Request context: an id for every HTTP request (in the logs and on the response), and the request count."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.ops.logs import request_id_var
from server.ops.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-Id"
# A client's id goes into our logs and headers, so only a plain token of sane length is honoured.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestContextMiddleware:
    """Gives each HTTP request an id (the client's ``X-Request-Id`` if it sent a sane one), puts it in
    the log context and on the response, and counts the response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = sent if _CLIENT_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # for the 500 handler, which runs outside
        status = 500  # what the outermost error middleware answers if the app raises before responding
        counted = False

        def count() -> None:
            nonlocal counted
            if not counted:
                counted = True
                self.metrics.record_http_request(_endpoint_label(scope), status)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte leaves, so a client that has its answer finds it in
                # /metrics; a stream the client abandons never gets here and is counted on return.
                count()
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            count()


def _endpoint_label(scope: Scope) -> str:
    """The route template, never the raw path, so the label set stays small.

    "/" is the web UI mount (and unknown paths); "unrouted" a request refused before routing (401, 413).
    """
    route = scope.get("route")
    return (getattr(route, "path_format", "") or "/") if route is not None else "unrouted"
