"""Our extension, in llama.cpp server's shapes: ``POST /tokenize`` and ``POST /detokenize``.

Both take an optional ``model`` (the served model by default), like the /v1 routes.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.routes.openai import service_for
from server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter()


def _model(body: TokenizeRequest | DetokenizeRequest) -> str | None:
    model = (body.model_extra or {}).get("model")
    return model if isinstance(model, str) else None


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    return (await service_for(request, _model(body))).tokenize(body)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    service = await service_for(request, _model(body))
    service.check_model(_model(body))
    return service.detokenize(body)
