"""One served model: its engine, its scheduler, and the services of every endpoint family over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.engine.base import Engine
from server.prompting.named import NamedTemplates
from server.runtime.scheduler import Scheduler
from server.services.chat import ChatService, template_for
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingsService
from server.services.limits import RequestLimits
from server.services.messages import MessagesService
from server.services.pipeline import Pipeline
from server.services.responses import ResponsesService
from server.services.tokens import TokenService


@dataclass
class LoadedModel:
    model_id: str
    engine: Engine
    scheduler: Scheduler
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingsService
    tokens: TokenService
    messages: MessagesService
    responses: ResponsesService
    close: Callable[[], None]  # stops the scheduler, frees the embedder and the engine; blocks

    @classmethod
    def serve(
        cls,
        model_id: str,
        engine: Engine,
        scheduler: Scheduler,
        *,
        limits: RequestLimits | None = None,
        chat_template: str | None = None,
        named_templates: NamedTemplates | None = None,
        reasoning_format: str = "deepseek",
        pooling: str | None = None,
        close_engine: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> LoadedModel:
        """The services over a started scheduler; ``close_engine=False`` for an engine the caller owns."""
        pipeline = Pipeline(engine, scheduler, model_id=model_id, limits=limits)
        embeddings = EmbeddingsService.for_engine(engine, model_id=model_id, pooling=pooling)

        def close() -> None:
            scheduler.stop()
            embeddings.close()
            if close_engine:
                engine.close()
            if on_close is not None:
                on_close()

        template = template_for(engine, chat_template, named_templates)
        chat = ChatService(pipeline, template, split_reasoning=reasoning_format == "deepseek")
        return cls(
            model_id=model_id,
            engine=engine,
            scheduler=scheduler,
            chat=chat,
            completions=CompletionService(pipeline),
            embeddings=embeddings,
            tokens=TokenService(pipeline),
            messages=MessagesService(pipeline, chat),
            responses=ResponsesService(pipeline, chat),
            close=close,
        )
