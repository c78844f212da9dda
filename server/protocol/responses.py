"""OpenAI's Responses API (``/v1/responses``): the request, its input items, the Response object and
its items, names and fields as OpenAI's spec (``CreateResponse``, ``Response``) spells them.

Unlike chat completions, a create request forbids fields the spec does not define (OpenAI answers
``Unknown parameter`` with a 400, and so do we). Fields the spec defines that this server cannot
honour are listed in :data:`UNSUPPORTED_RESPONSE_FIELDS` and refused with a 400 naming them.

Input items are a tagged union on ``type``: an item of a type this server cannot read (built-in tool
calls, ``item_reference``, images...) still parses, into :class:`UnsupportedItem`, so that the service
refuses it with a message that names it instead of a wall of union errors. The stream events are
plain dicts built in :mod:`server.services.responses_output`; their shapes are the spec's
``ResponseStreamEvent`` members.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SerializerFunctionWrapHandler, Tag, model_serializer

# OpenAI-defined create fields we do not implement, with the values we can still accept.
UNSUPPORTED_RESPONSE_FIELDS: Mapping[str, Callable[[Any], bool]] = {
    "background": lambda v: v is False,
    "conversation": lambda v: False,
    "prompt": lambda v: False,
    "max_tool_calls": lambda v: True,  # counts built-in tool calls only: there are none here
    "service_tier": lambda v: v in ("auto", "default"),
    "prompt_cache_retention": lambda v: v == "in_memory",
    "prompt_cache_options": lambda v: False,
    "context_management": lambda v: False,
    "moderation": lambda v: False,
}
UNSUPPORTED_REASONS = {
    "background": "is not supported: this server answers every response in the foreground (leave it out or false)",
    "conversation": "is not supported: chain responses with 'previous_response_id' instead",
    "prompt": "is not supported: this server keeps no reusable prompts",
}
# What ``include`` may ask for.
INCLUDABLE = frozenset({"message.output_text.logprobs"})


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- input items --------------------------------------------------------------------------------


class InputText(_Params):
    type: Literal["input_text"]
    text: str


class OutputText(_Params):
    """An earlier reply's text, as the SDK sends a past output message back."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Params):
    type: Literal["refusal"]
    refusal: str


class UnsupportedPart(BaseModel):
    """A content part this server cannot read (``input_image``, ``input_file``, ``input_audio``...)."""

    model_config = ConfigDict(extra="allow")
    type: str


def _tag(known: frozenset[str], default: str | None = None) -> Callable[[Any], str]:
    def tag(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        # A type that is not a string (a list, an object) is something we cannot read either.
        return kind if isinstance(kind, str) and kind in known else "unsupported"

    return tag


def _text_or_list(value: Any) -> str:
    return "text" if isinstance(value, str) else "list"


ContentPart = Annotated[
    Annotated[InputText, Tag("input_text")]
    | Annotated[OutputText, Tag("output_text")]
    | Annotated[Refusal, Tag("refusal")]
    | Annotated[UnsupportedPart, Tag("unsupported")],
    Discriminator(_tag(frozenset({"input_text", "output_text", "refusal"}))),
]
Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentPart], Tag("list")], Discriminator(_text_or_list)
]


class MessageItem(_Params):
    """``EasyInputMessage``, ``InputMessage`` and ``OutputMessage`` alike (``type`` may be left out)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(_Params):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    namespace: str | None = None


class FunctionCallOutputItem(_Params):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=64)
    output: Content
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class SummaryText(_Params):
    type: Literal["summary_text"]
    text: str


class ReasoningText(_Params):
    type: Literal["reasoning_text"]
    text: str


class ReasoningInputItem(_Params):
    """An earlier turn's thinking, as a client managing its own history sends it back."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class UnsupportedItem(BaseModel):
    """An item of a type this server cannot read (built-in tool calls, item references...)."""

    model_config = ConfigDict(extra="allow")
    type: Any = None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningInputItem, Tag("reasoning")]
    | Annotated[UnsupportedItem, Tag("unsupported")],
    Discriminator(_tag(frozenset({"message", "function_call", "function_call_output", "reasoning"}), "message")),
]
InputField = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[InputItem], Tag("list")], Discriminator(_text_or_list)
]


# ---- the other request fields -------------------------------------------------------------------


class TextFormatText(_Params):
    type: Literal["text"]


class TextFormatJsonObject(_Params):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Params):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="the schema's name")
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema the output is held to")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextParam(_Params):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(_Params):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    mode: str | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None


class StreamOptionsParam(_Params):
    include_obfuscation: bool | None = None  # no obfuscation padding is ever sent


class ResponseCreateRequest(_Params):
    model: str | None = Field(default=None, description="model id; default: the served model")
    input: InputField | None = Field(default=None, description="a string (one user message) or a list of items")
    instructions: str | None = Field(default=None, description="a system prompt; not carried to follow-ups")
    tools: list[dict[str, Any]] | None = Field(default=None, description="function tools (Responses' flat shape)")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, description="most tokens to generate")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    store: bool | None = Field(default=None, description="keep the response for GET and chaining (default true)")
    previous_response_id: str | None = Field(default=None, description="continue from this stored response")
    metadata: dict[str, str] | None = Field(default=None, description="up to 16 keys, echoed back")
    truncation: Literal["auto", "disabled"] | None = None
    stream: bool | None = False
    stream_options: StreamOptionsParam | None = None
    reasoning: ReasoningParam | None = None
    user: str | None = Field(default=None, description="end-user id; logged")
    safety_identifier: str | None = Field(default=None, max_length=64, description="logged")
    prompt_cache_key: str | None = Field(default=None, description="logged (the prefix cache needs no key)")
    # Defined by OpenAI, refused unless harmless (UNSUPPORTED_RESPONSE_FIELDS).
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_tool_calls: int | None = None
    service_tier: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: list[Any] | None = None
    moderation: Any = None
    # Our extensions, as on the other generation routes (documented in the README).
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1, description="lower is sooner")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, ge=0.0, le=10.0)


class InputTokensRequest(_Params):
    """``POST /v1/responses/input_tokens``: the prompt a create with these fields would process."""

    model: str | None = None
    input: InputField | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    truncation: Literal["auto", "disabled"] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None


class InputTokens(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


# ---- the Response object ------------------------------------------------------------------------


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class Response(BaseModel):
    """Every field the spec requires, ``null`` where empty; output items are the spec's dicts."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}, "verbosity": "medium"})
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: dict[str, str] = Field(default_factory=dict)
    usage: ResponseUsage | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["default"] = "default"
    background: bool = False

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for optional in ("user", "usage"):  # not nullable in the spec: absent until known
            if data.get(optional) is None:
                data.pop(optional, None)
        return data


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str
    last_id: str
    has_more: bool
