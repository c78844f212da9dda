"""The typed error tree. Each error knows its HTTP status and OpenAI ``type``/``code``, and
renders itself in OpenAI's shape (:meth:`~LlamaserveError.to_dict`) or Anthropic's
(:meth:`~LlamaserveError.to_anthropic_dict`, whose type follows from the status); the handlers in
:mod:`server.api.error_handlers` choose the shape by route family, in one place.

    LlamaserveError                     500 server_error
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── UnsupportedFieldError       400 (param = the field)
    │   ├── ContextLengthExceededError  400 code=context_length_exceeded
    │   └── RequestTooLargeError        413 code=request_too_large
    ├── AuthenticationError             401 invalid_api_key
    ├── ModelNotFoundError              404 code=model_not_found
    ├── RouteNotFoundError              404 code=not_found
    ├── MethodNotAllowedError           405 code=method_not_allowed
    ├── QueueFullError                  429 (carries retry_after seconds)
    │   └── KeyQueueFullError           429 code=key_queue_full (one API key's share is full)
    ├── ServiceUnavailableError         503 (loading, draining)
    ├── GenerationError                 500 (the engine failed mid-request)
    └── RequestTimeoutError             504 (--request-timeout passed)

Subclasses that live beside what raises them: ``InvalidSchemaError`` (400, under
``InvalidRequestError``) in :mod:`server.prompting.grammar`; ``ConfigError`` in
:mod:`server.settings`, ``ChatTemplateError`` in :mod:`server.prompting.chat_template` and
``ModelFileError`` in :mod:`server.engine.llama.model_files`, which the CLI reports at start-up;
``StateStoreError`` (500; exit 2 at start-up) and ``UnknownItemError`` (400, under
``InvalidRequestError``) in :mod:`server.state`.
"""

from __future__ import annotations

from collections.abc import Sequence

# Anthropic has one error type per status; a status it does not list is an invalid request
# (4xx) or an api_error (5xx), as its docs say.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class LlamaserveError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    @property
    def anthropic_type(self) -> str:
        fallback = "api_error" if self.status_code >= 500 else "invalid_request_error"
        return ANTHROPIC_ERROR_TYPES.get(self.status_code, fallback)

    def to_anthropic_dict(self) -> dict[str, object]:
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}


class InvalidRequestError(LlamaserveError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedFieldError(InvalidRequestError):
    code = "unsupported_parameter"

    def __init__(self, field: str, reason: str = "is not supported by this server") -> None:
        super().__init__(f"'{field}' {reason}.", param=field)


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"

    def __init__(
        self, requested: int, limit: int, param: str = "messages", *, prompt_tokens: int | None = None
    ) -> None:
        detail = ""
        if prompt_tokens is not None:
            where = "the messages" if param == "messages" else f"the {param}"
            detail = f" ({prompt_tokens} in {where}, {requested - prompt_tokens} in the completion)"
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{requested} tokens{detail}. Please reduce the length of the {param} or max_tokens.",
            param=param,
        )
        self.requested = requested
        self.limit = limit


class RequestTooLargeError(InvalidRequestError):
    status_code = 413
    code = "request_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"The request body is larger than this server's limit of {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes


class AuthenticationError(LlamaserveError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFoundError(LlamaserveError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class RouteNotFoundError(LlamaserveError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Unknown route: {method} {path}")


class MethodNotAllowedError(LlamaserveError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Method {method} is not allowed on {path}")


class QueueFullError(LlamaserveError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    code = "queue_full"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"The server is busy: the request queue is full. Retry in {retry_after} s.")
        self.retry_after = retry_after


class KeyQueueFullError(QueueFullError):
    """This API key already has ``--max-queue-per-key`` requests waiting; other keys may still queue."""

    code = "key_queue_full"

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.message = f"Too many requests from this API key are waiting for the model. Retry in {retry_after} s."
        self.args = (self.message,)


class ServiceUnavailableError(LlamaserveError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class GenerationError(LlamaserveError):
    status_code = 500
    error_type = "server_error"
    code = "generation_failed"


class RequestTimeoutError(LlamaserveError):
    status_code = 504
    error_type = "server_error"
    code = "request_timeout"

    def __init__(self, limit_seconds: float) -> None:
        super().__init__(
            f"The request took longer than this server's limit of {limit_seconds:g} s and was ended. "
            "Ask for fewer tokens, or retry when the server is less busy."
        )
        self.limit_seconds = limit_seconds


# Names pydantic puts in an error's location for the member of a union that failed.
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def openai_param(loc: Sequence[int | str]) -> str | None:
    """A validation error's location as OpenAI names a parameter: ``messages[0].content``.

    Drops the request-body prefix and pydantic's union-member labels (``stop.str``,
    ``prompt.list[int]``, a discriminated union's tag repeated before its field).
    """
    out: list[str] = []
    previous: str | None = None
    for part in loc:
        if isinstance(part, int):
            if out:
                out[-1] += f"[{part}]"
            continue
        if part == "body" and not out:
            continue
        if part in _UNION_MEMBERS or "[" in part or part == previous:
            previous = part
            continue
        out.append(part)
        previous = part
    return ".".join(out) or None
