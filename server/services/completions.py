"""Legacy ``/v1/completions``: raw prompts (text or token ids) in, text out.

Each prompt gets ``n`` choices; choice ``p * n + i`` is prompt ``p``'s ``i``-th, as OpenAI
numbers them. ``echo`` puts the prompt text in front of the completion; ``logprobs`` (0..10, where
OpenAI stops at 5) uses the legacy parallel-list format. ``suffix`` (insertion) and ``best_of`` other
than 1 are refused: the model is not an infill model and we do not rank hidden candidates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server.errors import InvalidRequestError, UnsupportedFieldError
from server.protocol import (
    UNSUPPORTED_COMPLETION_FIELDS,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from server.runtime.events import FinishEvent, PrefillEvent, QueuedEvent, TokenEvent
from server.services.encoded_chunks import TextChunks
from server.services.limits import check_generation_fields, refuse_unsupported
from server.services.pipeline import (
    ANONYMOUS,
    Caller,
    ChoiceText,
    Chunk,
    Pipeline,
    PreparedGeneration,
    StreamItem,
    Submitted,
    progress_comment,
    wants_progress,
)
from server.services.sampling import check_token_ids, request_grammar

_REASONS = {
    "suffix": "is not supported: this model is not an infill model",
    "best_of": "other than 1 is not supported by this server",
}


@dataclass(frozen=True)
class PreparedCompletion:
    generation: PreparedGeneration
    echo_texts: list[str]  # per prompt: the text ``echo`` shows
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool


@dataclass
class _Choice(ChoiceText):
    logprobs: CompletionLogprobs = field(default_factory=CompletionLogprobs)
    offset: int = 0  # characters so far, for text_offset


class CompletionService:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def _check(self, req: CompletionRequest) -> None:
        check_generation_fields(req, self.pipeline.limits)
        fields = {**(req.model_extra or {}), "suffix": req.suffix, "best_of": req.best_of}
        refuse_unsupported(fields, UNSUPPORTED_COMPLETION_FIELDS, _REASONS)
        if req.echo and req.logprobs is not None:
            raise UnsupportedFieldError("logprobs", "together with 'echo' (prompt logprobs) is not supported")

    def _prompts(self, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
        prompt = req.prompt
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
        engine = self.pipeline.engine
        if isinstance(prompt, str) or all(isinstance(p, str) for p in prompt):
            texts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
            tokens = [engine.tokenize(t, add_special=True, parse_special=True) for t in texts]
            for i, t in enumerate(tokens):
                if not t:
                    raise InvalidRequestError(f"Prompt {i} is empty.", param="prompt")
            return tokens, texts
        lists: list[list[int]] = (
            [[int(t) for t in prompt]]  # type: ignore[arg-type]
            if all(isinstance(p, int) for p in prompt)
            else [[int(t) for t in p] for p in prompt]  # type: ignore[union-attr]
        )
        for i, ids in enumerate(lists):
            if not ids:
                raise InvalidRequestError(f"Prompt {i} is empty.", param="prompt")
            check_token_ids(ids, self.pipeline.info.n_vocab, param="prompt", what=f"Prompt {i}")
        echo = ["".join(self.pipeline.token_text(t)[0] for t in ids) for ids in lists]
        return lists, echo

    def prepare(self, req: CompletionRequest, request_id: str, caller: Caller = ANONYMOUS) -> PreparedCompletion:
        """Check and tokenize (blocking: the service calls it in a worker thread)."""
        self._check(req)
        self.pipeline.log_caller("completion", req, request_id)
        prompts, echo_texts = self._prompts(req)
        grammar, grammar_param = request_grammar(req)
        generation = self.pipeline.prepare(
            req,
            prompts,
            request_id=request_id,
            max_tokens=req.max_tokens,
            prompt_param="prompt",
            n=req.n or 1,
            top_logprobs=req.logprobs,
            grammar=grammar,
            grammar_param=grammar_param,
            caller=caller,
            progress=wants_progress(req),
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return PreparedCompletion(generation, echo_texts, bool(req.echo), req.logprobs, bool(req.stream), include_usage)

    async def start(self, req: CompletionRequest, request_id: str, caller: Caller = ANONYMOUS) -> CompletionGeneration:
        prepared = await self.pipeline.off_loop(lambda: self.prepare(req, request_id, caller))
        return CompletionGeneration(self.pipeline, prepared, self.pipeline.submit(prepared.generation))


class CompletionGeneration(Submitted[PreparedCompletion]):
    """One submitted completion request: :meth:`response` for JSON, or :meth:`chunks` for SSE."""

    def _add_logprobs(self, choice: _Choice, ev: TokenEvent) -> None:
        text, _ = self._pipeline.token_text(ev.token)
        lp = choice.logprobs
        lp.tokens.append(text)
        lp.token_logprobs.append(ev.logprob if ev.logprob is not None else 0.0)
        lp.top_logprobs.append({self._pipeline.token_text(alt.token)[0]: alt.logprob for alt in ev.top_logprobs})
        lp.text_offset.append(choice.offset)
        choice.offset += len(text)

    def _choices(self) -> list[_Choice]:
        p = self.prepared
        choices = [_Choice() for _ in range(p.generation.n_choices)]
        if p.echo:
            for i, c in enumerate(choices):
                c.parts.append(p.echo_texts[i // p.generation.n])
                c.offset = len(c.parts[0])
        return choices

    async def response(self) -> Completion:
        p, pipe = self.prepared, self._pipeline
        choices = self._choices()
        if self._handles:
            async for i, ev in pipe.events(p.generation, self._handles):
                c = choices[i]
                c.parts.append(ev.text)
                if isinstance(ev, FinishEvent):
                    c.finish = ev
                elif p.logprobs is not None:
                    self._add_logprobs(c, ev)
        return Completion(
            id=p.generation.request_id,
            created=pipe.now(),
            model=pipe.model_id,
            system_fingerprint=pipe.fingerprint,
            choices=[
                CompletionChoice(
                    text=c.text,
                    index=i,
                    logprobs=c.logprobs if p.logprobs is not None else None,
                    finish_reason=pipe.finish_reason(c.finish.reason if c.finish else None),
                )
                for i, c in enumerate(choices)
            ],
            usage=pipe.usage(p.generation, [c.finish for c in choices]),
        )

    async def chunks(self) -> AsyncIterator[StreamItem]:
        """Chunk dicts (the same shape as a full response); errors are raised to the route."""
        p, pipe = self.prepared, self._pipeline
        created = pipe.now()

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> Chunk:
            return pipe.wire_chunk(
                Completion, p.generation.request_id, created, choices, usage, include_usage=p.include_usage
            )

        text_chunks = TextChunks(lambda i, text: chunk([CompletionChoice(text=text, index=i, finish_reason=None)]))
        choices = self._choices()
        if p.echo:
            for i, c in enumerate(choices):
                yield chunk([CompletionChoice(text=c.text, index=i, finish_reason=None)])
        if not self._handles:  # max_tokens 0: nothing to generate
            for i in range(len(choices)):
                yield chunk([CompletionChoice(text="", index=i, finish_reason="length")])
        else:
            async for i, ev in pipe.stream_events(p.generation, self._handles):
                if isinstance(ev, QueuedEvent | PrefillEvent):
                    yield progress_comment(i, ev)
                    continue
                c = choices[i]
                if isinstance(ev, TokenEvent):
                    lp = None
                    if p.logprobs is not None:
                        c.logprobs = CompletionLogprobs()
                        self._add_logprobs(c, ev)
                        lp = c.logprobs
                    if lp is not None:
                        yield chunk([CompletionChoice(text=ev.text, index=i, logprobs=lp, finish_reason=None)])
                    elif ev.text:
                        yield text_chunks.encode(i, ev.text)
                    continue
                c.finish = ev
                yield chunk([CompletionChoice(text=ev.text, index=i, finish_reason=pipe.finish_reason(ev.reason))])
        if p.include_usage:
            yield chunk([], pipe.usage(p.generation, [c.finish for c in choices]))
