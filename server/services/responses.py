"""``/v1/responses``: OpenAI's Responses API over the chat pipeline, with its stored state.

A create becomes chat messages and OpenAI function tools (:mod:`server.services.responses_input`),
which the chat service renders and tokenizes exactly as it would a chat request; then the shared
:class:`~server.services.pipeline.Pipeline` sizes, submits and streams it, and
:mod:`server.services.responses_output` writes the output items, the Response and the stream events.

State lives in the :class:`~server.state.ResponseStore` the app opens (its methods block: every call
runs off the event loop). ``previous_response_id`` continues a stored response's conversation (its
inputs and outputs, back along the chain), read as the caller's own: another API key's response is
not found. ``store`` (default true) writes the finished response, its input items, and the
conversation a follow-up continues from; rendering that conversation again as one message list
keeps the prompt a prefix of the next one, so the engine's prefix cache serves most of a follow-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from server.errors import InvalidRequestError, ResponseNotFoundError, UnsupportedFieldError
from server.prompting.grammar import JSON_OBJECT_GBNF
from server.prompting.tools import ToolPlan, plan_tools
from server.protocol import SamplingFields
from server.protocol.responses import (
    InputItem,
    InputTokens,
    InputTokensRequest,
    MessageItem,
    Response,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseItemList,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from server.services.chat import ChatService
from server.services.pipeline import ANONYMOUS, Caller, Pipeline
from server.services.reasoning import opens_thinking
from server.services.responses_input import (
    Request,
    chat_messages,
    check_request,
    function_tools,
    parse_stored,
    previous_not_found,
    request_items,
    stored_items,
    tool_choice,
)
from server.services.responses_output import PreparedResponse, ResponsesGeneration
from server.services.sampling import schema_grammar
from server.state import ItemPage, ResponseStore, StoredResponse

log = logging.getLogger(__name__)

THINKING_SWITCHES = frozenset({"enable_thinking", "reasoning_effort"})


def owner_of(caller: Caller) -> str | None:
    """Whose stored responses a caller sees: its API key's id; None when the server has no keys."""
    return caller.key_id or None


class ResponsesService:
    def __init__(self, pipeline: Pipeline, chat: ChatService) -> None:
        self.pipeline = pipeline
        self.chat = chat  # renders and tokenizes: one prompt for one conversation, whichever the API

    # ---- the prompt -------------------------------------------------------------------------------

    def _history(self, req: Request, store: ResponseStore | None, owner: str | None) -> StoredResponse | None:
        prev_id = req.previous_response_id
        if prev_id is None:
            return None
        prev = store.get(prev_id, owner) if store is not None else None
        if prev is None:
            raise previous_not_found(prev_id)
        return prev

    def _plan(self, req: Request) -> tuple[ToolPlan | None, list[dict[str, Any]]]:
        nested, echoed = function_tools(req)
        choice, allowed = tool_choice(req, nested)
        plan = plan_tools(allowed, choice, req.parallel_tool_calls, self.chat.template.tool_style)
        return plan, echoed

    def _variables(self, req: Request) -> dict[str, Any]:
        effort = req.reasoning.effort if req.reasoning is not None else None
        if effort is None or not self.chat.template.reads & THINKING_SWITCHES:
            return {}
        return {"enable_thinking": effort != "none", "reasoning_effort": effort}

    def _render(self, req: Request, items: Sequence[InputItem], plan: ToolPlan | None) -> str:
        # An empty input is answered from the generation prompt alone (Codex probes a server so).
        messages = chat_messages(req.instructions, items)
        return self.chat.render_prompt(messages, plan, variables=self._variables(req))

    def _check_reasoning(self, req: Request, prompt: str) -> None:
        reasoning = req.reasoning
        asked = reasoning is not None and (reasoning.effort not in (None, "none") or reasoning.summary is not None)
        thinks = bool(self.chat.template.reads & THINKING_SWITCHES) or opens_thinking(prompt)
        if asked and not (thinks and self.chat.split_reasoning):
            raise UnsupportedFieldError("reasoning", "is not supported: this model does not reason")

    def _prompt(
        self, req: Request, items: list[InputItem], plan: ToolPlan | None, room: int
    ) -> tuple[str, list[int], int]:
        """The prompt text and tokens, and how many leading items ``truncation: auto`` dropped."""
        text = self._render(req, items, plan)
        tokens = self.chat.tokenize_prompt(text)
        limit = self.pipeline.info.n_ctx_per_seq
        if req.truncation != "auto" or len(tokens) + room <= limit:
            return text, tokens, 0
        # Cut before a user message (never between a call and its output), the system turns kept;
        # fewer items render shorter, so the least cut that fits is found by bisection.
        cuts = [i for i, it in enumerate(items) if i > 0 and isinstance(it, MessageItem) and it.role == "user"]
        best: tuple[str, list[int], int] | None = None
        lo, hi = 0, len(cuts) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            kept = [it for it in items[: cuts[mid]] if _is_system(it)] + items[cuts[mid] :]
            t = self._render(req, kept, plan)
            toks = self.chat.tokenize_prompt(t)
            if len(toks) + room <= limit:
                best, hi = (t, toks, len(items) - len(kept)), mid - 1
            else:
                lo = mid + 1
        if best is None:
            return text, tokens, 0  # nothing fits: the pipeline refuses it as too long
        log.info("truncation auto dropped the %d oldest input items of %d", best[2], len(items))
        return best

    # ---- create ---------------------------------------------------------------------------------

    def prepare(
        self, req: ResponseCreateRequest, response_id: str, caller: Caller, store: ResponseStore | None
    ) -> PreparedResponse:
        """Check, read the chain, render and tokenize (blocking: run off the event loop)."""
        check_request(req, self.pipeline.limits)
        keep = req.store is not False
        if keep and store is None:
            if req.store:
                raise UnsupportedFieldError("store", "needs the response store, which this server has not opened")
            keep = False
        owner = owner_of(caller)
        prev = self._history(req, store, owner)
        plan, echoed_tools = self._plan(req)
        new_items = request_items(req)
        history = parse_stored(prev.conversation) if prev is not None else []
        items = history + new_items
        grammar, grammar_param = _grammar(req, plan)
        text, tokens, dropped = self._prompt(req, items, plan, req.max_output_tokens or 1)
        self._check_reasoning(req, text)
        sampling = SamplingFields.model_validate(
            {
                "model": req.model,
                "temperature": req.temperature,
                "top_p": req.top_p,
                "top_k": req.top_k,
                "min_p": req.min_p,
                "repeat_penalty": req.repeat_penalty,
                "seed": req.seed,
                "priority": req.priority,
                # Logged only (safety_identifier, prompt_cache_key travel as extras).
                "user": req.user,
                "safety_identifier": req.safety_identifier,
                "prompt_cache_key": req.prompt_cache_key,
            }
        )
        self.pipeline.log_caller("response", sampling, response_id)
        logprobs = "message.output_text.logprobs" in (req.include or [])
        generation = self.pipeline.prepare(
            sampling,
            [tokens],
            request_id=response_id,
            max_tokens=req.max_output_tokens,
            prompt_param="input",
            n=1,
            top_logprobs=(req.top_logprobs or 0) if logprobs else None,
            grammar=grammar,
            grammar_param=grammar_param,
            caller=caller,
        )
        response = _echo(req, response_id, self.pipeline, echoed_tools, keep)
        stored_input = stored_items(new_items)
        before = [*(prev.conversation if prev is not None else []), *stored_input]

        async def on_done(final: Response) -> None:
            if not keep or store is None:
                return
            record = StoredResponse(
                id=final.id,
                owner=owner,
                created_at=final.created_at,
                model=final.model,
                previous_response_id=req.previous_response_id,
                response=final.model_dump(),
                input_items=stored_input,
                conversation=[*before, *final.output],
            )
            # A failed write is a StateStoreError (500): the client was told the response is kept.
            await self.pipeline.off_loop(lambda: store.put(record))

        thinking = opens_thinking(text) if self.chat.split_reasoning and grammar is None else None
        return PreparedResponse(
            generation, plan, bool(req.stream), response, on_done, logprobs, thinking, dropped=dropped
        )

    async def start(
        self,
        req: ResponseCreateRequest,
        response_id: str,
        caller: Caller = ANONYMOUS,
        store: ResponseStore | None = None,
    ) -> ResponsesGeneration:
        """Prepare (off the event loop) and submit; every refusal is raised before any output."""
        prepared = await self.pipeline.off_loop(lambda: self.prepare(req, response_id, caller, store))
        return ResponsesGeneration(self.pipeline, prepared, self.pipeline.submit(prepared.generation))

    # ---- input_tokens -----------------------------------------------------------------------------

    def count(self, req: InputTokensRequest, caller: Caller, store: ResponseStore | None) -> InputTokens:
        check_request(req, self.pipeline.limits)
        prev = self._history(req, store, owner_of(caller))
        plan, _ = self._plan(req)
        items = (parse_stored(prev.conversation) if prev is not None else []) + request_items(req)
        _, tokens, _ = self._prompt(req, items, plan, 1)
        return InputTokens(input_tokens=len(tokens))

    async def input_tokens(
        self, req: InputTokensRequest, caller: Caller = ANONYMOUS, store: ResponseStore | None = None
    ) -> InputTokens:
        return await self.pipeline.off_loop(lambda: self.count(req, caller, store))


def _is_system(item: InputItem) -> bool:
    return isinstance(item, MessageItem) and item.role in ("system", "developer")


def _grammar(req: ResponseCreateRequest, plan: ToolPlan | None) -> tuple[str | None, str | None]:
    """A forced tool call's grammar, or the one ``text.format`` asks for (not both)."""
    tool_grammar = plan.grammar() if plan is not None else None
    fmt = req.text.format if req.text is not None else None
    if not isinstance(fmt, TextFormatJsonObject | TextFormatJsonSchema):
        return tool_grammar, "tools" if tool_grammar else None
    if tool_grammar is not None:
        raise InvalidRequestError(
            "A tool_choice that requires a call cannot be combined with a JSON 'text.format'.", param="tool_choice"
        )
    if isinstance(fmt, TextFormatJsonObject):
        return JSON_OBJECT_GBNF, "text.format"
    param = "text.format.schema"
    return schema_grammar(fmt.schema_, strict=bool(fmt.strict), param=param), param


def _echo(
    req: ResponseCreateRequest, response_id: str, pipeline: Pipeline, tools: list[dict[str, Any]], store: bool
) -> Response:
    """The Response as it starts: the request's parameters echoed, no output yet."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    return Response(
        id=response_id,
        created_at=pipeline.now(),
        status="in_progress",
        instructions=req.instructions,
        model=pipeline.model_id,
        parallel_tool_calls=req.parallel_tool_calls is not False,
        tools=tools,
        tool_choice=choice,
        temperature=req.temperature,
        top_p=req.top_p,
        top_logprobs=req.top_logprobs,
        max_output_tokens=req.max_output_tokens,
        previous_response_id=req.previous_response_id,
        reasoning=req.reasoning.model_dump(include={"effort", "summary"}) if req.reasoning is not None else None,
        store=store,
        text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}
        | {"verbosity": "medium"},
        truncation=req.truncation or "disabled",
        metadata=req.metadata or {},
        user=req.user,
        safety_identifier=req.safety_identifier,
        prompt_cache_key=req.prompt_cache_key,
    )


# ---- stored responses ---------------------------------------------------------------------------
# The store is the app's, not a model's: these need no model loaded.


async def retrieve(store: ResponseStore | None, response_id: str, caller: Caller) -> dict[str, Any]:
    record = await Pipeline.off_loop(lambda: store.get(response_id, owner_of(caller))) if store else None
    if record is None:
        raise ResponseNotFoundError(response_id)
    return record.response


async def delete(store: ResponseStore | None, response_id: str, caller: Caller) -> ResponseDeleted:
    deleted = await Pipeline.off_loop(lambda: store.delete(response_id, owner_of(caller))) if store else False
    if not deleted:
        raise ResponseNotFoundError(response_id)
    return ResponseDeleted(id=response_id)


async def cancel(store: ResponseStore | None, response_id: str, caller: Caller) -> None:
    """Only a background response can be cancelled, and this server runs none: a 400 (404 if unknown)."""
    await retrieve(store, response_id, caller)
    raise InvalidRequestError(
        "Only responses created with 'background': true can be cancelled; this server runs none in the background."
    )


async def input_items(
    store: ResponseStore | None,
    response_id: str,
    caller: Caller,
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> ResponseItemList:
    owner = owner_of(caller)

    def page() -> ItemPage | None:
        assert store is not None
        return store.input_items(response_id, owner, after=after, limit=limit, order=order)

    found = await Pipeline.off_loop(page) if store else None
    if found is None:
        raise ResponseNotFoundError(response_id)
    data = found.items
    # The spec types both ids as strings, never null: an empty page has "" (the SDK pages by data's ids).
    return ResponseItemList(
        data=data,
        first_id=data[0]["id"] if data else "",
        last_id=data[-1]["id"] if data else "",
        has_more=found.has_more,
    )
