"""``llamaserve -p TEXT``: one completion to stdout, no server (llamafile's ``-p``).

The same engine and :class:`~server.scheduler.Scheduler` the server uses run in this
process, so ``-p`` behaves like one request to the server would. stdout carries only
the completion, written as it is generated; every log line goes to stderr, so
``llamaserve -p ... > out.txt`` captures exactly the generated text.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TextIO

from pydantic import BaseModel, Field

from server.engine.base import Engine, SamplingParams
from server.errors import ContextLengthExceededError
from server.protocol import ChatMessage
from server.runtime.events import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import Scheduler
from server.services.chat import ChatService, template_for
from server.services.pipeline import Pipeline
from server.settings import Settings

log = logging.getLogger(__name__)

# llama.cpp's sampling defaults, so `-p` gives what llama-cli and llamafile users expect.
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05


class PromptOptions(BaseModel):
    """Flags of the one-shot mode; the CLI makes one flag per field, as for :class:`Settings`."""

    prompt: str | None = Field(default=None, description="complete this text to stdout and exit (no server)")
    n_predict: int = Field(
        default=-1, ge=-1, description="tokens to generate with -p (-1 = until end of text or a full context)"
    )
    temp: float = Field(default=0.8, ge=0.0, le=2.0, description="sampling temperature with -p (0 = greedy)")
    seed: int = Field(default=-1, ge=-1, description="sampling seed with -p (-1 = random)")
    chat: bool = Field(default=False, description="with -p: send the prompt as a user message under the chat template")


async def _generate(engine: Engine, settings: Settings, options: PromptOptions, out: TextIO) -> None:
    params = SamplingParams(
        temperature=options.temp,
        top_k=TOP_K,
        top_p=TOP_P,
        min_p=MIN_P,
        seed=None if options.seed < 0 else options.seed,
    )
    scheduler = Scheduler(engine, max_queue=1)
    # The server's own service renders the chat template and tokenizes, so -p --chat sends the
    # model exactly what a chat request with one user message would.
    service = ChatService(
        Pipeline(engine, scheduler, model_id=engine.info.id), template_for(engine, settings.chat_template)
    )
    scheduler.start()
    try:
        text = options.prompt or ""
        if options.chat:
            text = service.render_prompt([ChatMessage(role="user", content=text)])
        tokens = service.tokenize_prompt(text)
        n_ctx = engine.info.n_ctx_per_seq
        if len(tokens) >= n_ctx:
            raise ContextLengthExceededError(len(tokens), n_ctx, param="prompt")
        room = n_ctx - len(tokens)
        max_tokens = room if options.n_predict < 0 else min(options.n_predict, room)
        if max_tokens == 0:
            return
        handle = scheduler.submit(GenerationRequest(tokens, params, max_tokens, request_id="prompt"))
        async for ev in handle.events():
            if isinstance(ev, TokenEvent | FinishEvent):
                if ev.text:
                    out.write(ev.text)
                    out.flush()
                if isinstance(ev, FinishEvent):
                    log.info("%d prompt tokens, %d generated, finish: %s", len(tokens), ev.completion_tokens, ev.reason)
            elif isinstance(ev, ErrorEvent):
                raise ev.error
    finally:
        await asyncio.to_thread(scheduler.stop)


def run_prompt(
    settings: Settings,
    options: PromptOptions,
    *,
    engine_factory: Callable[[Settings], Engine] | None = None,
    out: TextIO | None = None,
) -> None:
    """Load the model, stream one completion to ``out`` (stdout), close the model.

    Raises :class:`~server.errors.LlamaserveError` for a prompt the model cannot take.
    """
    if engine_factory is None:
        from server.api.engines import load_llama_engine  # the server's own construction, flags and all

        engine_factory = load_llama_engine
    out = out or sys.stdout
    # One sequence: a single completion needs one slot's worth of KV cache, not --parallel's.
    engine = engine_factory(settings.model_copy(update={"parallel": 1}))
    try:
        asyncio.run(_generate(engine, settings, options, out))
    finally:
        engine.close()
    if out.isatty():
        out.write("\n")  # a terminal's prompt would otherwise follow the text on its line
        out.flush()
