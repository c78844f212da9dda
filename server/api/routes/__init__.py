"""HTTP routes, one module per API family; :func:`at_root` gives a ``/v1`` router its unprefixed twin."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute


def at_root(router: APIRouter, prefix: str = "/v1") -> APIRouter:
    """The same handlers without ``prefix``: llama-server answers ``/chat/completions`` as
    ``/v1/chat/completions``, and its clients set ``base_url`` without ``/v1``.

    New route objects rather than the router included twice, so each twin has its own path template
    (metrics label it) and the OpenAPI document lists each operation once.
    """
    root = APIRouter()
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r} is not an API route")  # a mount or websocket would need its own twin
        root.add_api_route(
            route.path.removeprefix(prefix),
            route.endpoint,
            methods=sorted(route.methods or ()),
            response_model=route.response_model,
            name=f"{route.name}_unprefixed",
            include_in_schema=False,
        )
    return root
