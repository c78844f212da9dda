"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``): names and fields as the
official ``anthropic`` SDK (2.15) spells them.

Request models forbid fields Anthropic does not define (Anthropic answers those with a 400, and so do
we). Fields it defines that only steer Anthropic's own infrastructure (``metadata``, ``service_tier``,
``cache_control``, ``context_management``, ``inference_geo``, ``speed``, workspace and profile ids)
are accepted and have no effect: our prefix cache is automatic. Fields that ask for something this
server cannot do are listed in :data:`UNSUPPORTED_MESSAGE_FIELDS` and refused with a 400 naming them.

Content blocks and tools are tagged unions: a block or tool of a type we cannot serve (images,
documents, server tools) still parses, into :class:`UnsupportedBlock` / :class:`ServerTool`, so that
the service can refuse it with a message that names it instead of a wall of union errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

UNSUPPORTED_MESSAGE_FIELDS: Mapping[str, Callable[[Any], bool]] = {
    "container": lambda v: False,
    "diagnostics": lambda v: False,
    "mcp_servers": lambda v: v == [],
}

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(_Params):
    """Accepted on every block and tool, and ignored: the prefix cache reuses any shared prefix."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockParam(_Params):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ToolUseBlockParam(_Params):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class UnsupportedBlock(BaseModel):
    """A block of a type this server cannot read (image, document, server-tool results...)."""

    model_config = ConfigDict(extra="allow")
    type: str


class ThinkingBlockParam(_Params):
    """A previous turn's thinking, sent back by clients; dropped before rendering, as Anthropic does."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlockParam(_Params):
    type: Literal["redacted_thinking"]
    data: str


def _text_or_blocks(value: Any) -> str:
    # One branch per shape, so a wrong block is reported as itself, not as "not a string" too.
    return "text" if isinstance(value, str) else "blocks"


def _tag(known: frozenset[str]) -> Callable[[Any], str]:
    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        # A type that is not a string (a list, an object) is a block we cannot read either.
        return kind if isinstance(kind, str) and kind in known else "unsupported"

    return tag


ResultContent = Annotated[
    Annotated[TextBlockParam, Tag("text")] | Annotated[UnsupportedBlock, Tag("unsupported")],
    Discriminator(_tag(frozenset({"text"}))),
]


class ToolResultBlockParam(_Params):
    type: Literal["tool_result"]
    tool_use_id: str
    content: (
        Annotated[
            Annotated[str, Tag("text")] | Annotated[list[ResultContent], Tag("blocks")],
            Discriminator(_text_or_blocks),
        ]
        | None
    ) = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


ContentBlockParam = Annotated[
    Annotated[TextBlockParam, Tag("text")]
    | Annotated[ToolUseBlockParam, Tag("tool_use")]
    | Annotated[ToolResultBlockParam, Tag("tool_result")]
    | Annotated[ThinkingBlockParam, Tag("thinking")]
    | Annotated[RedactedThinkingBlockParam, Tag("redacted_thinking")]
    | Annotated[UnsupportedBlock, Tag("unsupported")],
    Discriminator(_tag(frozenset({"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}))),
]


class MessageParam(_Params):
    # "system" inside messages is the SDK's mid-conversation system message: folded into the system prompt.
    role: Literal["user", "assistant", "system"]
    content: Annotated[
        Annotated[str, Tag("text")] | Annotated[list[ContentBlockParam], Tag("blocks")],
        Discriminator(_text_or_blocks),
    ]


class CustomTool(_Params):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    input_schema: dict[str, Any] = Field(description="a JSON Schema of the tool's input object")
    description: str | None = None
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None
    eager_input_streaming: bool | None = None  # input always streams as it is generated


class ServerTool(BaseModel):
    """A tool Anthropic runs itself (``web_search_20250305``...): refused, this server runs none."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: str | None = None


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "custom" if kind in (None, "custom") else "server"


ToolUnion = Annotated[
    Annotated[CustomTool, Tag("custom")] | Annotated[ServerTool, Tag("server")], Discriminator(_tool_tag)
]


class ToolChoiceAuto(_Params):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Params):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Params):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Params):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class ThinkingEnabled(_Params):
    type: Literal["enabled"]
    budget_tokens: int
    display: str | None = None


class ThinkingDisabled(_Params):
    type: Literal["disabled"]


class ThinkingAdaptive(_Params):
    """The model decides whether to think: one that cannot, never does."""

    type: Literal["adaptive"]
    display: str | None = None


Thinking = Annotated[ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")]


class JsonOutputFormat(_Params):
    model_config = ConfigDict(populate_by_name=True)
    type: Literal["json_schema"]
    # ``schema`` would shadow a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON Schema the reply satisfies")


class OutputConfig(_Params):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # a hint for thinking models
    format: JsonOutputFormat | None = None


class Metadata(_Params):
    user_id: str | None = Field(default=None, description="an opaque caller id; logged")


class MessagesInput(_Params):
    """What ``count_tokens`` reads: everything that makes up the prompt."""

    model: str = Field(description="the served model's id")
    messages: list[MessageParam] = Field(min_length=1)
    system: (
        Annotated[
            Annotated[str, Tag("text")] | Annotated[list[TextBlockParam], Tag("blocks")],
            Discriminator(_text_or_blocks),
        ]
        | None
    ) = None
    tools: list[ToolUnion] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    # Accepted, no effect here (infrastructure, attribution, server-side context editing).
    context_management: dict[str, Any] | None = None
    speed: Literal["standard", "fast"] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    # Defined by Anthropic, refused when set (UNSUPPORTED_MESSAGE_FIELDS).
    mcp_servers: list[Any] | None = None


class MessageCreateRequest(MessagesInput):
    max_tokens: int = Field(ge=0, description="required, as Anthropic requires it; at most --max-tokens-limit")
    stop_sequences: list[str] | None = Field(default=None, description="at most --max-stop strings")
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0 = off; default 40, as for chat")
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    inference_geo: str | None = None
    container: Any = None
    diagnostics: Any = None


# ---- responses --------------------------------------------------------------------------------


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class MessageUsage(BaseModel):
    """``input_tokens`` excludes what the prefix cache supplied: the three input counts add up to the prompt."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class MessageTokensCount(BaseModel):
    input_tokens: int


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None


class MessageDeltaEvent(BaseModel):
    """The counts are cumulative: the SDK overwrites its snapshot with them."""

    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"
