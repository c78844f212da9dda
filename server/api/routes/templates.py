"""``POST /apply-template`` (llama.cpp server's endpoint): a chat request in, the exact prompt out."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.routes.models import model_for
from server.protocol import ApplyTemplateResponse, ChatCompletionRequest

router = APIRouter()


@router.post("/apply-template", response_model=ApplyTemplateResponse)
async def apply_template(body: ChatCompletionRequest, request: Request) -> ApplyTemplateResponse:
    """The text the model would see for this chat request, tools and generation prompt included."""
    chat = (await model_for(request, body.model)).chat
    return ApplyTemplateResponse(prompt=await chat.pipeline.off_loop(lambda: chat.apply_template(body)))
