"""Legacy ``/v1/completions``: raw prompts (text or token ids) in, text out.

Each prompt gets ``n`` choices; choice ``p * n + i`` is prompt ``p``'s ``i``-th, as
OpenAI numbers them. ``echo`` puts the prompt text in front of the completion;
``logprobs`` (0..5) uses the legacy parallel-list format. ``suffix`` (insertion)
and ``best_of`` other than 1 are refused: the model is not an infill model and we
do not rank hidden candidates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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
from server.runtime.events import FinishEvent, GenerationRequest, TokenEvent
from server.runtime.scheduler import RequestHandle
from server.services.limits import RequestLimits, check_sampling_fields, first_unencodable_string
from server.services.pipeline import GenerationService


@dataclass
class CompletionPlan:
    """A validated request: its prompts as tokens, the text ``echo`` shows, the scheduler requests."""

    prompts: list[list[int]]
    echo_texts: list[str]
    n: int
    requests: list[GenerationRequest]  # empty when max_tokens is 0: nothing to generate


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: CompletionLogprobs = field(default_factory=CompletionLogprobs)
    offset: int = 0  # characters so far, for text_offset
    finish: FinishEvent | None = None


class CompletionService(GenerationService):
    limits = RequestLimits()

    # ---- request preparation ----------------------------------------------------------------

    def _validate(self, req: CompletionRequest) -> None:
        extra = req.model_extra or {}
        fields = {**extra, "suffix": req.suffix, "best_of": req.best_of}
        for name, acceptable in UNSUPPORTED_COMPLETION_FIELDS.items():
            value = fields.get(name)
            if value is not None and not acceptable(value):
                reason = (
                    "is not supported: this model is not an infill model"
                    if name == "suffix"
                    else "other than 1 is not supported by this server"
                )
                raise UnsupportedFieldError(name, reason)
        if req.echo and req.logprobs is not None:
            raise UnsupportedFieldError("logprobs", "together with 'echo' (prompt logprobs) is not supported")
        if req.stream_options is not None and not req.stream:
            raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")

    def _prompts(self, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
        prompt = req.prompt
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
        n_vocab = self.engine.info.n_vocab
        if isinstance(prompt, str):
            texts: list[str] | None = [prompt]
        elif all(isinstance(p, str) for p in prompt):
            texts = [str(p) for p in prompt]
        else:
            texts = None
        if texts is not None:
            tokens = [self.engine.tokenize(t, add_special=True, parse_special=True) for t in texts]
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
            bad = [t for t in ids if not 0 <= t < n_vocab]
            if bad:
                raise InvalidRequestError(
                    f"Prompt {i} holds token ids outside the vocabulary (0..{n_vocab - 1}): {bad[:5]}.",
                    param="prompt",
                )
        echo = ["".join(self.token_text(t)[0] for t in ids) for ids in lists]
        return lists, echo

    def prepare(self, req: CompletionRequest, request_id: str) -> CompletionPlan:
        self.check_model(req.model)
        check_sampling_fields(req, self.limits)
        bad = first_unencodable_string(req.model_dump(exclude_none=True))
        if bad is not None:
            raise InvalidRequestError(f"'{bad}' holds text that is not valid Unicode (a lone surrogate).", param=bad)
        self._validate(req)
        self.log_caller("completion", req, request_id)
        prompts, echo_texts = self._prompts(req)
        n = req.n or 1
        requests: list[GenerationRequest] = []
        for prompt in prompts:
            budget = self.token_budget(len(prompt), req.max_tokens, param="prompt")
            if budget == 0:
                continue
            requests += self.generation_requests(
                req,
                prompt,
                request_id=request_id,
                max_tokens=budget,
                n=n,
                top_logprobs=req.logprobs,
                grammar=req.grammar,
            )
        return CompletionPlan(prompts, echo_texts, n, requests)

    # ---- responses --------------------------------------------------------------------------

    def _add_logprobs(self, choice: _Choice, ev: TokenEvent) -> None:
        text, _ = self.token_text(ev.token)
        lp = choice.logprobs
        lp.tokens.append(text)
        lp.token_logprobs.append(ev.logprob if ev.logprob is not None else 0.0)
        lp.top_logprobs.append({self.token_text(alt.token)[0]: alt.logprob for alt in ev.top_logprobs})
        lp.text_offset.append(choice.offset)
        choice.offset += len(text)

    def _usage(self, plan: CompletionPlan, finishes: Sequence[FinishEvent | None]) -> Usage:
        # Each prompt counts once however many choices it has. The choice that computed it reports
        # the real cache hits; the others reused its cells, so per prompt the least is the truth.
        cached = 0
        for p in range(len(plan.prompts)):
            mine = [f.cached_tokens for f in finishes[p * plan.n : (p + 1) * plan.n] if f is not None]
            cached += min(mine, default=0)
        completion = sum(f.completion_tokens for f in finishes if f is not None)
        return self.usage(sum(len(p) for p in plan.prompts), completion, cached)

    async def complete(
        self, req: CompletionRequest, plan: CompletionPlan, handles: Sequence[RequestHandle], request_id: str
    ) -> Completion:
        n_choices = len(plan.prompts) * plan.n
        choices = [_Choice() for _ in range(n_choices)]
        for i, c in enumerate(choices):
            if req.echo:
                c.text.append(plan.echo_texts[i // plan.n])
            c.offset = len(c.text[0]) if c.text else 0
        if handles:
            async for i, ev in self.merged_events(handles):
                c = choices[i]
                c.text.append(ev.text)
                if isinstance(ev, TokenEvent):
                    if req.logprobs is not None:
                        self._add_logprobs(c, ev)
                else:
                    c.finish = ev
        return Completion(
            id=request_id,
            created=self.now(),
            model=self.model_id,
            system_fingerprint=self.fingerprint,
            choices=[
                CompletionChoice(
                    text="".join(c.text),
                    index=i,
                    logprobs=c.logprobs if req.logprobs is not None else None,
                    finish_reason=self.finish_reason(c.finish.reason) if c.finish else "length",  # type: ignore[arg-type]
                )
                for i, c in enumerate(choices)
            ],
            usage=self._usage(plan, [c.finish for c in choices]),
        )

    async def stream(
        self, req: CompletionRequest, plan: CompletionPlan, handles: Sequence[RequestHandle], request_id: str
    ) -> AsyncIterator[dict[str, object]]:
        """Yield chunk dicts (the same shape as a full response); errors are raised to the route."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        created = self.now()
        n_choices = len(plan.prompts) * plan.n

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, object]:
            return self.wire_chunk(Completion, request_id, created, choices, usage, include_usage=include_usage)

        choices = [_Choice() for _ in range(n_choices)]
        if req.echo:
            for i in range(n_choices):
                text = plan.echo_texts[i // plan.n]
                choices[i].offset = len(text)
                yield chunk([CompletionChoice(text=text, index=i, finish_reason=None)])
        if not handles:
            for i in range(n_choices):
                yield chunk([CompletionChoice(text="", index=i, finish_reason="length")])
        else:
            async for i, ev in self.merged_events(handles):
                c = choices[i]
                if isinstance(ev, TokenEvent):
                    lp = None
                    if req.logprobs is not None:
                        c.logprobs = CompletionLogprobs()
                        self._add_logprobs(c, ev)
                        lp = c.logprobs
                    if ev.text or lp is not None:
                        yield chunk([CompletionChoice(text=ev.text, index=i, logprobs=lp, finish_reason=None)])
                    continue
                c.finish = ev
                reason = self.finish_reason(ev.reason)
                yield chunk([CompletionChoice(text=ev.text, index=i, finish_reason=reason)])  # type: ignore[arg-type]
        if include_usage:
            yield chunk([], self._usage(plan, [c.finish for c in choices]))
