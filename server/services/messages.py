"""``/v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API over the chat pipeline.

A request becomes chat messages and OpenAI function tools (:mod:`server.services.messages_prompt`),
which the chat service renders and tokenizes exactly as it would a chat request; then the shared
:class:`~server.services.pipeline.Pipeline` sizes, submits and streams it. Only the output side is
Anthropic's own: content blocks, ``stop_reason`` and the named stream events
(:mod:`server.services.messages_output`). ``count_tokens`` is the same render and tokenizer, so it
equals the prompt a create would process.
"""

from __future__ import annotations

from server.errors import InvalidRequestError
from server.prompting.grammar import InvalidSchemaError, json_schema_to_gbnf
from server.prompting.tools import ToolPlan, plan_tools
from server.protocol import SamplingFields
from server.protocol.anthropic import (
    UNSUPPORTED_MESSAGE_FIELDS,
    MessageCreateRequest,
    MessagesInput,
    MessageTokensCount,
)
from server.services.chat import ChatService
from server.services.limits import refuse_unsupported
from server.services.messages_output import MessagesGeneration, PreparedMessages
from server.services.messages_prompt import (
    chat_messages,
    check_create,
    check_input,
    continues_final,
    function_tools,
    openai_tool_choice,
)
from server.services.pipeline import ANONYMOUS, Caller, Pipeline


class MessagesService:
    def __init__(self, pipeline: Pipeline, chat: ChatService) -> None:
        self.pipeline = pipeline
        self.chat = chat  # renders and tokenizes: one prompt for one conversation, whichever the API

    def _prompt(self, req: MessagesInput) -> tuple[list[int], ToolPlan | None]:
        """Check, plan the tools, render and tokenize (blocking: run off the event loop)."""
        refuse_unsupported(
            {name: getattr(req, name, None) for name in UNSUPPORTED_MESSAGE_FIELDS}, UNSUPPORTED_MESSAGE_FIELDS
        )
        choice, parallel = openai_tool_choice(req)
        plan = plan_tools(function_tools(req), choice, parallel, self.chat.template.tool_style)
        messages = chat_messages(req)
        prefill = continues_final(messages)
        text = self.chat.render_prompt(messages, plan, add_generation_prompt=not prefill, continue_final=prefill)
        return self.chat.tokenize_prompt(text), plan

    def count(self, req: MessagesInput) -> MessageTokensCount:
        check_input(req, self.pipeline.limits)
        tokens, _ = self._prompt(req)
        return MessageTokensCount(input_tokens=len(tokens))

    async def count_tokens(self, req: MessagesInput) -> MessageTokensCount:
        return await self.pipeline.off_loop(lambda: self.count(req))

    def prepare(self, req: MessageCreateRequest, request_id: str, caller: Caller = ANONYMOUS) -> PreparedMessages:
        check_create(req, self.pipeline.limits)
        tokens, plan = self._prompt(req)
        grammar, grammar_param = _grammar(req, plan)
        sampling = SamplingFields(
            model=req.model,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=req.stop_sequences,
            user=req.metadata.user_id if req.metadata else None,
        )
        self.pipeline.log_caller("message", sampling, request_id)
        generation = self.pipeline.prepare(
            sampling,
            [tokens],
            request_id=request_id,
            max_tokens=req.max_tokens,
            prompt_param="messages",
            n=1,
            top_logprobs=None,
            grammar=grammar,
            grammar_param=grammar_param,
            caller=caller,  # the key's share of the queue and its default priority, as on chat
        )
        return PreparedMessages(generation, plan, bool(req.stream))

    async def start(self, req: MessageCreateRequest, request_id: str, caller: Caller = ANONYMOUS) -> MessagesGeneration:
        """Prepare (off the event loop) and submit; every refusal is raised before any output."""
        prepared = await self.pipeline.off_loop(lambda: self.prepare(req, request_id, caller))
        return MessagesGeneration(self.pipeline, prepared, self.pipeline.submit(prepared.generation))


def _grammar(req: MessageCreateRequest, plan: ToolPlan | None) -> tuple[str | None, str | None]:
    """A forced tool call's grammar, or the one ``output_config.format`` asks for (not both)."""
    tool_grammar = plan.grammar() if plan is not None else None
    fmt = req.output_config.format if req.output_config else None
    if fmt is None:
        return tool_grammar, "tools" if tool_grammar else None
    if tool_grammar is not None:
        raise InvalidRequestError(
            "A tool_choice that requires a call cannot be combined with 'output_config.format'.", param="tool_choice"
        )
    param = "output_config.format.schema"
    try:
        return json_schema_to_gbnf(fmt.schema_, strict=True), param
    except InvalidSchemaError as exc:
        exc.param = param
        raise
