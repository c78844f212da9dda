"""Every OpenAI wire model, in one place. Names and field order follow OpenAI's spec.

Request models forbid nothing on their own: OpenAI ignores fields it does not
define, and so do we. Fields OpenAI defines that this server does not support
are listed in ``UNSUPPORTED_*`` and refused with a 400 naming the field (some
only for the values that ask for something we do not do).
Our own extensions (``top_k``, ``min_p``, ``repeat_penalty``, ``grammar``) and the
``/tokenize`` ``/detokenize`` bodies (llama.cpp server's shapes) live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

# OpenAI-defined request fields we do not implement, with the values we can still accept
# (None = no value but null): a 400 naming the field, never silence.
UNSUPPORTED_CHAT_FIELDS: Mapping[str, Callable[[Any], bool]] = {
    "audio": lambda v: False,
    "modalities": lambda v: v == ["text"],
    "prediction": lambda v: False,
    "web_search_options": lambda v: False,
    "functions": lambda v: False,
    "function_call": lambda v: False,
    "verbosity": lambda v: False,
    "store": lambda v: v is False,
    "service_tier": lambda v: v in ("auto", "default"),
    "moderation": lambda v: False,
    "prompt_cache_retention": lambda v: v == "in_memory",
}
UNSUPPORTED_COMPLETION_FIELDS: Mapping[str, Callable[[Any], bool]] = {
    "best_of": lambda v: v == 1,
    "suffix": lambda v: v == "",
}
# Accepted and only logged: they identify the caller, nothing more.
LOGGED_FIELDS = ("user", "safety_identifier", "prompt_cache_key")

FinishReasonWire = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    """A message content part; only ``text`` (and ``refusal`` in assistant turns) is read."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    refusal: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier turn's thinking, given back to the template


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    # Our extension (server/protocol/progress.py): SSE comment lines, which OpenAI clients skip.
    include_progress: bool | None = Field(
        default=None, description="send ': queued' and ': progress' SSE comments while the prompt waits and prefills"
    )


class ResponseFormatText(BaseModel):
    type: Literal["text"]


class ResponseFormatJsonObject(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    type: Literal["json_object"]
    # llama-server's extension: an object held to this JSON Schema (non-strict rules).
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="a JSON Schema (extension)")


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="the schema's name")
    description: str | None = None
    # ``schema`` would shadow a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="a JSON Schema")
    strict: bool | None = False


class ResponseFormatJsonSchema(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]

StopField = Annotated[
    str | list[str] | None,
    Field(default=None, description="stop strings (at most --max-stop); the output never contains them"),
]
LogitBias = dict[str, Annotated[float, Field(ge=-100, le=100)]]


class SamplingFields(_Request):
    """Sampling fields shared by chat and legacy completions, plus our documented extensions."""

    model: str | None = Field(default=None, description="model id; default: the served model")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = Field(default=None, description="token id -> bias (-100..100)")
    # Upper bounds of n and stop are settings (--max-n, --max-stop), checked by the service.
    n: int | None = Field(default=None, ge=1, description="choices to generate (at most --max-n)")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="choice i samples with seed+i")
    stop: StopField = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = Field(default=None, description="end-user id; logged")
    # Extensions (documented in the README).
    top_k: int | None = Field(default=None, ge=0, description="llama.cpp top-k (0 = off; default 40)")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="llama.cpp min-p (default 0.05)")
    repeat_penalty: float | None = Field(default=None, ge=0.0, le=10.0, description="llama.cpp repeat penalty")
    grammar: str | None = Field(default=None, description="GBNF grammar (root rule 'root') constraining the output")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="a JSON Schema the output is held to, as llama-server takes it (non-strict rules)"
    )
    ignore_eos: bool | None = Field(
        default=None,
        description="never sample end-of-generation tokens (for benchmarks): generation ends on max_tokens, "
        "a stop string or a full context",
    )
    priority: int | None = Field(
        default=None,
        ge=-(2**31),
        le=2**31 - 1,
        description="scheduling priority: lower is sooner, ties go by arrival (default 0, or the API key's "
        "configured priority)",
    )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="maximum tokens to generate")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's prompt-ending fields (extensions); default: a final assistant message is continued.
    add_generation_prompt: bool | None = Field(
        default=None, description="end the prompt with the assistant's turn header (default: unless continuing)"
    )
    continue_final_message: bool | None = Field(
        default=None, description="leave the final message open for the model to continue (default: if assistant)"
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        default=None, description="'none' turns a thinking template's thinking off; any other value on"
    )
    chat_template_kwargs: dict[str, bool | int | float | str] | None = Field(
        default=None, description='extra template variables (simple values only), e.g. {"enable_thinking": false}'
    )


PromptField = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptField | None = Field(default=None, description="text, texts, token ids or lists of token ids")
    echo: bool | None = False
    # OpenAI allows 0..5; we allow 10 (a superset, as llama-server's n_probs is), so the web UI's
    # completion mode can show ten alternatives per token.
    logprobs: int | None = Field(default=None, ge=0, le=10, description="top alternatives per token (0..10)")
    max_tokens: int | None = Field(default=16, ge=0, description="maximum tokens to generate (default 16)")
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=0, le=20)


class ContentInput(BaseModel):
    """llama-server's object form of one embeddings input: ``{"content": text or token ids}``."""

    model_config = ConfigDict(extra="forbid")
    content: str | list[int]


EmbeddingInput = str | list[int] | ContentInput | list[str | list[int] | ContentInput]


class EmbeddingRequest(_Request):
    input: EmbeddingInput = Field(
        description="text, token ids, a {content} object, or a list of them (one embedding each)"
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class TokenizeRequest(_Request):
    """``POST /tokenize`` (our extension; llama.cpp server's shape)."""

    content: str
    add_special: bool = Field(default=False, description="add BOS (and EOS) as the model does")
    parse_special: bool = Field(default=True, description="read special-token text as the special token")
    with_pieces: bool = Field(default=False, description="return {id, piece} objects instead of ids")


class DetokenizeRequest(_Request):
    tokens: list[int]


# ---- responses -----------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry] | None
    refusal: list[TokenLogprobEntry] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None  # the <think> part (--reasoning-format deepseek), as llama-server

    @model_serializer(mode="wrap")
    def _drop_absent_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # content and refusal are required even when null; tool_calls and reasoning only when there are some.
        data: dict[str, Any] = handler(self)
        for optional in ("tool_calls", "reasoning_content"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return data


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonWire


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonWire | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions logprobs format: parallel lists, one entry per token."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None  # None only in stream chunks


class Completion(BaseModel):
    """A legacy completion; stream chunks have this same shape (``usage`` only on the last)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 when asked


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelPlacement(BaseModel):
    """Our extension on a loaded model: where its weights are (llama.cpp's buffer names)."""

    split: bool = Field(description="true when the weights are spread over several devices (RPC workers)")
    devices: list[str] = Field(description="buffers holding the weights, e.g. CPU_Mapped, RPC0[10.0.0.2:50052]")


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llamaserve"
    placement: ModelPlacement | None = None  # only for a loaded model whose placement is known
    aliases: list[str] | None = None  # other names that route to it (-a id,name2), as llama-server lists them

    @model_serializer(mode="wrap")
    def _drop_unknown_placement(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for optional in ("placement", "aliases"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return data


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class ApplyTemplateResponse(BaseModel):
    """``POST /apply-template`` (llama.cpp server's shape): the prompt exactly as the model sees it."""

    prompt: str


class DetokenizeResponse(BaseModel):
    content: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
