"""Validate response bodies and stream chunks against OpenAI's own OpenAPI spec.

``openai-openapi.yaml`` beside this file is a verbatim copy of OpenAI's spec
(openai/openai-openapi, commit f85dbe2, sha256 db5d7478...), so the tests do not
depend on a file outside the repository. The spec is OpenAPI 3.1: its component
schemas are JSON Schema 2020-12 with ``$ref`` to ``#/components/schemas/...``, so
the whole document is registered as one resource and each component is validated
through a ``$ref`` into it. Loading it takes about a second; do it once per session.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "openai-openapi.yaml"
_SPEC_URI = "urn:openai-openapi"


class SpecViolation(AssertionError):
    pass


def _honour_nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (which this 3.1 spec still uses in places) as JSON Schema.

    JSON Schema 2020-12 ignores ``nullable``, so ``{"type": "string", "nullable": true}`` would
    reject the ``null`` OpenAI itself sends (``finish_reason`` in stream chunks, for one).
    """
    if isinstance(node, list):
        return [_honour_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _honour_nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str) and "enum" not in out:
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "enum" not in out:
            out["type"] = [*kind, "null"] if "null" not in kind else kind
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


class OpenAISpec:
    def __init__(self, document: Mapping[str, Any]) -> None:
        document = _honour_nullable(document)
        self.document = document
        self.schemas: Mapping[str, Any] = document["components"]["schemas"]
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}
        self._event_components: dict[str, str] = {}

    def validator(self, component: str) -> Draft202012Validator:
        if component not in self._validators:
            if component not in self.schemas:
                raise KeyError(f"the spec has no component schema {component!r}")
            schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{component}"}
            self._validators[component] = Draft202012Validator(schema, registry=self._registry)
        return self._validators[component]

    def stream_event_component(self, event_type: str) -> str:
        """The ``ResponseStreamEvent`` member schema of events of ``event_type``."""
        if not self._event_components:
            for member in self.schemas["ResponseStreamEvent"]["anyOf"]:
                name = member["$ref"].rsplit("/", 1)[-1]
                for kind in self.schemas[name].get("properties", {}).get("type", {}).get("enum", []):
                    self._event_components[kind] = name
        if event_type not in self._event_components:
            raise SpecViolation(f"{event_type!r} is not a Responses stream event type")
        return self._event_components[event_type]

    def validate(self, component: str, body: Any) -> None:
        """Raise :class:`SpecViolation` naming every place ``body`` breaks ``component``."""
        errors = sorted(self.validator(component).iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            raise SpecViolation(_describe(component, body, errors))

    def validate_completion_chunk(self, chunk: Mapping[str, Any]) -> None:
        """A legacy completions stream chunk.

        OpenAI documents that stream chunks share ``CreateCompletionResponse``, yet its
        streams carry ``finish_reason: null`` until each choice ends, and with
        ``include_usage`` every chunk but the last has ``usage: null`` (the spec's
        ``stream_options`` text); that schema allows neither null. We accept those two
        nulls exactly there and check the rest of the chunk against the spec.
        """
        body = json.loads(json.dumps(chunk))
        if "usage" in body and body["usage"] is None:
            del body["usage"]
        for choice in body.get("choices", []):
            if isinstance(choice, dict) and choice.get("finish_reason", "") is None:
                choice["finish_reason"] = "stop"
        self.validate("CreateCompletionResponse", body)

    def validate_stream(self, component: str, chunks: Iterable[Mapping[str, Any]]) -> None:
        for chunk in chunks:
            if component == "CreateCompletionResponse":
                self.validate_completion_chunk(chunk)
            else:
                self.validate(component, chunk)


def _describe(component: str, body: Any, errors: list[ValidationError]) -> str:
    lines = [f"body does not satisfy OpenAI's {component}:"]
    for e in errors[:10]:
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        lines.append(f"  at {where}: {e.message[:300]}")
    lines.append("body: " + json.dumps(body)[:2000])
    return "\n".join(lines)


@functools.cache
def load_spec() -> OpenAISpec:
    with SPEC_PATH.open("rb") as f:
        document = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return OpenAISpec(document)


# ---- checking what an HTTP client received ------------------------------------------------------

_JSON_COMPONENTS = {
    ("POST", "/v1/chat/completions"): "CreateChatCompletionResponse",
    ("POST", "/v1/completions"): "CreateCompletionResponse",
    ("POST", "/v1/embeddings"): "CreateEmbeddingResponse",
    ("GET", "/v1/models"): "ListModelsResponse",
    ("POST", "/v1/responses"): "Response",
    ("POST", "/v1/responses/input_tokens"): "TokenCountsResource",
}
_STREAM_COMPONENTS = {
    "/v1/chat/completions": "CreateChatCompletionStreamResponse",
    "/v1/completions": "CreateCompletionResponse",
    "/v1/responses": "ResponseStreamEvent",
}
# How a Responses stream ends: its terminal event, or an error event (nothing after either).
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


_UNPREFIXED = ("/chat/completions", "/completions", "/embeddings", "/models", "/responses")


def as_v1(path: str) -> str:
    """The /v1 twin of an unprefixed OpenAI route (the server answers both alike), so both are checked."""
    if any(path == p or path.startswith(p + "/") for p in _UNPREFIXED):
        return "/v1" + path
    return path


def component_for(method: str, path: str) -> str | None:
    if (method, path) in _JSON_COMPONENTS:
        return _JSON_COMPONENTS[(method, path)]
    if method == "GET" and path.startswith("/v1/models/"):
        return "Model"
    if method == "GET" and path.startswith("/v1/responses/"):
        return "ResponseItemList" if path.endswith("/input_items") else "Response"
    return None


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event, data) for each server-sent event; comments (keep-alives) are skipped."""
    events: list[tuple[str | None, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((event, "\n".join(data)))
    return events


def check_http_response(spec: OpenAISpec, method: str, path: str, request_body: bytes, status: int,
                        content_type: str, body: bytes) -> list[str]:  # fmt: skip
    """Validate one /v1 response against the spec; returns the components checked."""
    path = as_v1(path)
    # OPTIONS is a CORS preflight, answered by middleware, not the API; 499 has no reader.
    if not path.startswith("/v1/") or method == "OPTIONS" or status == 499:
        return []
    if status >= 400:
        spec.validate("ErrorResponse", json.loads(body))
        return ["ErrorResponse"]
    if content_type.startswith("text/event-stream"):
        component = _STREAM_COMPONENTS.get(path)
        if component is None:
            return []
        events = sse_events(body.decode("utf-8"))
        if path == "/v1/responses":
            return check_responses_stream(spec, events)
        checked = []
        if not events or (events[-1] != (None, "[DONE]") and events[-1][0] != "error"):
            raise SpecViolation(f"a stream from {path} must end with 'data: [DONE]' or an error event")
        for event, data in events:
            if data == "[DONE]":
                continue
            if event == "error":
                spec.validate("ErrorResponse", json.loads(data))
                checked.append("ErrorResponse")
            else:
                spec.validate_stream(component, [json.loads(data)])
                checked.append(component)
        return checked
    component = component_for(method, path)
    if component is None:
        return []
    parsed = json.loads(body)
    if component == "CreateEmbeddingResponse" and _asks_base64(request_body):
        # The spec types `embedding` as number[] only; base64 requests get a string (OpenAI's
        # own behaviour, decoded by its SDK). Check it is one, then the rest against the spec.
        for item in parsed.get("data", []):
            if not isinstance(item.get("embedding"), str):
                raise SpecViolation("encoding_format=base64 must give a base64 string")
            item["embedding"] = [0.0]
    spec.validate(component, parsed)
    return [component]


def check_responses_stream(spec: OpenAISpec, events: list[tuple[str | None, str]]) -> list[str]:
    """A Responses stream: every event named as its ``type``, valid, numbered 0, 1, 2...; it starts
    with ``response.created`` and ends with its terminal event (no ``[DONE]``)."""
    parsed = [(name, json.loads(data)) for name, data in events]
    if not parsed or parsed[0][1].get("type") not in ("response.created", "error"):
        raise SpecViolation("a Responses stream must start with response.created")
    if parsed[-1][1].get("type") not in RESPONSES_TERMINAL:
        raise SpecViolation(f"a Responses stream must end with a terminal event, not {parsed[-1][1].get('type')}")
    for i, (name, body) in enumerate(parsed):
        if name != body.get("type") or body.get("sequence_number") != i:
            raise SpecViolation(f"event {i} is misnamed or misnumbered: event {name!r}, body {str(body)[:300]}")
        # The member schema its type names: the anyOf over all of them reports only "no match".
        spec.validate(spec.stream_event_component(str(body.get("type"))), body)
    return ["ResponseStreamEvent"] * len(parsed)


def _asks_base64(request_body: bytes) -> bool:
    try:
        return bool(json.loads(request_body or b"{}").get("encoding_format") == "base64")
    except (ValueError, AttributeError):
        return False
