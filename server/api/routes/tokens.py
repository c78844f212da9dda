"""Our extension, in llama.cpp server's shapes: ``POST /tokenize`` and ``POST /detokenize``.

Both take an optional ``model`` (the first model by default), like the /v1 routes.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.routes.models import model_for
from server.errors import InvalidRequestError
from server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter()


def _model(body: TokenizeRequest | DetokenizeRequest) -> str | None:
    model = (body.model_extra or {}).get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("'model' must be a string.", param="model")
    return model


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    return await (await model_for(request, _model(body))).tokens.tokenize(body)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    return await (await model_for(request, _model(body))).tokens.detokenize(body)
