"""JSON Schema -> GBNF, so that llama.cpp's grammar sampler makes the output satisfy the schema.

:func:`json_schema_to_gbnf` turns a JSON Schema into a GBNF grammar whose root rule
accepts only JSON documents that are valid instances of the schema. The grammar is
allowed to be *narrower* than the schema (that is always safe): objects carry their
declared properties in declaration order, extra properties only when the schema
asks for them with ``additionalProperties``, numbers have a bounded number of
digits, and whitespace between tokens is short, so a small model cannot run away
with spaces or digits.

Keywords a grammar cannot enforce (``pattern``, numeric bounds, ``uniqueItems``...)
are refused with :class:`InvalidSchemaError` when ``strict`` is true, because a
strict schema promises the output satisfies all of it; without ``strict`` they are
ignored (best effort), as OpenAI does for non-strict schemas.

:data:`JSON_OBJECT_GBNF` is the fixed grammar behind ``response_format: json_object``:
any JSON object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from server.errors import InvalidRequestError

__all__ = ["JSON_OBJECT_GBNF", "InvalidSchemaError", "json_schema_to_gbnf"]

# Short whitespace only: unbounded whitespace lets a small model loop on newlines forever.
_PRIMITIVES: dict[str, str] = {
    "ws": '| " " | "\\n" [ \\t]{0,16}',
    "char": '[^"\\\\\\x00-\\x1f\\x7f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char{0,512} "\\""',
    "integer": '"-"? ([0-9] | [1-9] [0-9]{0,15})',
    "number": 'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"',
    "array": '"[" ws ( value ws ( "," ws value ws )* )? "]"',
}
# Rules each primitive needs, so a grammar carries only what it uses.
_DEPENDS: dict[str, tuple[str, ...]] = {
    "string": ("char",),
    "number": ("integer",),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("ws", "string", "value"),
    "array": ("ws", "value"),
}

_FORMATS: dict[str, str] = {
    "date": '"\\"" [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) "\\""',
    "time": '"\\"" ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9]) "\\""',  # noqa: E501
    "date-time": '"\\"" [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) "T" ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9]) "\\""',  # noqa: E501
    "uuid": '"\\"" [0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12} "\\""',
}

# Keywords that only annotate: nothing to enforce.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
     "readOnly", "writeOnly", "$defs", "definitions", "nullable", "strict", "name"}
)  # fmt: skip
_ENFORCED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
     "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "format"}
)  # fmt: skip


class InvalidSchemaError(InvalidRequestError):
    """The schema is not one this server can turn into a grammar; callers set ``param``."""

    code = "invalid_json_schema"


def _literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_literal(value: Any) -> str:
    return _literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


class _Converter:
    def __init__(self, root: Mapping[str, Any], *, strict: bool) -> None:
        self.root = root
        self.strict = strict
        self.rules: dict[str, str] = {}
        self.primitives: set[str] = set()
        self.refs: dict[str, str] = {}  # "$ref" -> rule name (also guards recursion)

    # -- rule bookkeeping ---------------------------------------------------------------------

    def use(self, name: str) -> str:
        if name not in self.primitives:
            self.primitives.add(name)
            for dep in _DEPENDS.get(name, ()):
                self.use(dep)
        return name

    def add_rule(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "r"
        if base in _PRIMITIVES or base == "root":
            base += "-r"
        name, i = base, 1
        while name in self.rules and self.rules[name] != body:
            i += 1
            name = f"{base}-{i}"
        self.rules[name] = body
        return name

    def fail(self, where: str, message: str) -> InvalidSchemaError:
        return InvalidSchemaError(f"JSON schema at '{where or '#'}': {message}")

    def count(self, schema: Mapping[str, Any], key: str, where: str) -> int | None:
        """A length bound (``minLength``, ``maxItems``, ...): a whole number >= 0, or None when absent."""
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
            raise self.fail(where, f"'{key}' must be a non-negative integer")
        return int(value)

    # -- conversion -----------------------------------------------------------------------------

    def convert(self, schema: Any, where: str, hint: str) -> str:
        """Return a GBNF expression (a rule name or an inline group) for ``schema``."""
        if schema is True or (isinstance(schema, Mapping) and not schema):
            return self.use("value")
        if schema is False:
            raise self.fail(where, "the schema 'false' matches nothing")
        if not isinstance(schema, Mapping):
            raise self.fail(where, "a schema must be an object")
        self.check_keywords(schema, where)
        if "$ref" in schema:
            return self.ref(str(schema["$ref"]), where)
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(where, "'enum' must be a non-empty array")
            return "(" + " | ".join(_json_literal(v) for v in values) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise self.fail(where, f"'{key}' must be a non-empty array")
                rest = {k: v for k, v in schema.items() if k != key}
                alts = [
                    self.convert({**rest, **o} if isinstance(o, Mapping) else o, f"{where}/{key}/{i}", f"{hint}-{i}")
                    for i, o in enumerate(options)
                ]
                return "(" + " | ".join(alts) + ")"
        if "allOf" in schema:
            return self.convert(self.merge_all_of(schema, where), where, hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise self.fail(where, "'type' must not be an empty array")
            alts = [self.convert({**schema, "type": k}, where, f"{hint}-{k}") for k in kind]
            return "(" + " | ".join(alts) + ")"
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.use("value")
        if kind == "object":
            return self.object(schema, where, hint)
        if kind == "array":
            return self.array(schema, where, hint)
        if kind == "string":
            return self.string(schema, where, hint)
        if kind in ("integer", "number", "boolean", "null"):
            return self.use(str(kind))
        raise self.fail(where, f"unknown type {kind!r}")

    def check_keywords(self, schema: Mapping[str, Any], where: str) -> None:
        if not self.strict:
            return
        unknown = sorted(k for k in schema if k not in _ENFORCED and k not in _ANNOTATIONS)
        if unknown:
            raise self.fail(
                where,
                f"{', '.join(repr(k) for k in unknown)} cannot be enforced by a grammar; "
                "remove it or set 'strict' to false",
            )
        fmt = schema.get("format")
        if fmt is not None and fmt not in _FORMATS:
            raise self.fail(where, f"format {fmt!r} cannot be enforced; known formats: {', '.join(_FORMATS)}")

    def ref(self, ref: str, where: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not ref.startswith("#"):
            raise self.fail(where, f"only local references are supported, not {ref!r}")
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise self.fail(where, f"the reference {ref!r} points nowhere")
            target = target[part]
        name = self.add_rule("ref-" + ref.rsplit("/", 1)[-1], "")
        self.refs[ref] = name
        # A placeholder first, so a recursive schema refers to the rule it is defining.
        self.rules[name] = self.convert(target, ref, name)
        return name

    def merge_all_of(self, schema: Mapping[str, Any], where: str) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        parts = schema["allOf"]
        if not isinstance(parts, list):
            raise self.fail(where, "'allOf' must be an array")
        for i, part in enumerate(parts):
            while isinstance(part, Mapping) and "$ref" in part and len(part) == 1:
                part = self.resolve(str(part["$ref"]), f"{where}/allOf/{i}")
            if not isinstance(part, Mapping):
                raise self.fail(f"{where}/allOf/{i}", "a schema must be an object")
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                elif key in merged and merged[key] != value and key not in _ANNOTATIONS:
                    raise self.fail(f"{where}/allOf/{i}", f"cannot combine differing {key!r} values")
                else:
                    merged[key] = value
        return merged

    def resolve(self, ref: str, where: str) -> Any:
        target: Any = self.root
        if not ref.startswith("#"):
            raise self.fail(where, f"only local references are supported, not {ref!r}")
        for part in [p for p in ref[1:].split("/") if p]:
            if not isinstance(target, Mapping) or part not in target:
                raise self.fail(where, f"the reference {ref!r} points nowhere")
            target = target[part]
        return target

    def object(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise self.fail(where, "'properties' must be an object")
        required = schema.get("required") or []
        missing = [r for r in required if r not in props]
        extra = schema.get("additionalProperties")
        if missing and extra is False:
            raise self.fail(where, f"required properties {missing} are not in 'properties'")
        if self.strict and props and extra not in (False, None):
            raise self.fail(where, "strict schemas need 'additionalProperties': false")
        ws = self.use("ws")
        # Each item: (key-value expression, required?)
        items: list[tuple[str, bool]] = []
        for key, sub in props.items():
            value = self.convert(sub, f"{where}/properties/{key}", f"{hint}-{key}")
            items.append((f'{_json_literal(str(key))} {ws} ":" {ws} {value}', key in required or self.strict))
        for key in missing:
            items.append((f'{_json_literal(str(key))} {ws} ":" {ws} {self.use("value")}', True))
        extra_kv: str | None = None
        if extra is True or (extra is None and not props) or isinstance(extra, Mapping):
            value = (
                self.use("value")
                if extra in (True, None)
                else self.convert(extra, f"{where}/additionalProperties", f"{hint}-extra")
            )
            extra_kv = f'{self.use("string")} {ws} ":" {ws} {value}'
        # first_i: items i.. when nothing was written yet; rest_i: after something was written.
        first: list[str] = [""] * (len(items) + 1)
        rest: list[str] = [""] * (len(items) + 1)
        tail_rest = f'( "," {ws} {extra_kv} {ws} )*' if extra_kv else ""
        tail_first = f"( {extra_kv} {ws} {tail_rest} )?" if extra_kv else ""
        first[len(items)] = tail_first
        rest[len(items)] = tail_rest
        for i in range(len(items) - 1, -1, -1):
            kv, req = items[i]
            r_next = self.add_rule(f"{hint}-rest-{i + 1}", rest[i + 1]) if rest[i + 1] else ""
            with_it_first = f"{kv} {ws} {r_next}".strip()
            with_it_rest = f'"," {ws} {kv} {ws} {r_next}'.strip()
            if req:
                first[i] = with_it_first
                rest[i] = with_it_rest
            else:
                f_next = self.add_rule(f"{hint}-first-{i + 1}", first[i + 1]) if first[i + 1] else ""
                first[i] = f"( {with_it_first} )" + (f" | {f_next}" if f_next else " | ")
                rest[i] = f"( {with_it_rest} )?" if not r_next else f"( {with_it_rest} ) | {r_next}"
        body = first[0]
        inner = self.add_rule(f"{hint}-props", body) if body else ""
        return self.add_rule(hint or "object", f'"{{" {ws} {inner} "}}"')

    def array(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        ws = self.use("ws")
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        lo = self.count(schema, "minItems", where) or 0
        hi = self.count(schema, "maxItems", where)
        if hi is not None and hi < lo:
            raise self.fail(where, "'maxItems' is less than 'minItems'")
        if prefix:
            parts = [self.convert(p, f"{where}/prefixItems/{i}", f"{hint}-{i}") for i, p in enumerate(prefix)]
            if items not in (None, False) or lo > len(parts):
                raise self.fail(where, "'prefixItems' with further items is not supported")
            seq = f' {ws} "," {ws} '.join(parts)
            return self.add_rule(hint or "tuple", f'"[" {ws} {seq} {ws} "]"')
        item = self.use("value") if items in (None, True) else self.convert(items, f"{where}/items", f"{hint}-item")
        more = f'"," {ws} {item} {ws}'
        if hi == 0:
            return self.add_rule(hint or "array", f'"[" {ws} "]"')
        if hi is None:
            tail = f"( {more} )*" if lo <= 1 else f"( {more} ){{{lo - 1},}}"
        else:
            tail = f"( {more} ){{{max(lo - 1, 0)},{hi - 1}}}"
        body = f"{item} {ws} {tail}"
        if lo == 0:
            body = f"( {body} )?"
        return self.add_rule(hint or "array", f'"[" {ws} {body} "]"')

    def string(self, schema: Mapping[str, Any], where: str, hint: str) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return self.add_rule(f"format-{fmt}", _FORMATS[fmt])
        lo = self.count(schema, "minLength", where) or 0
        hi = self.count(schema, "maxLength", where)
        if "minLength" not in schema and hi is None:
            return self.use("string")
        if hi is not None and hi < lo:
            raise self.fail(where, "'maxLength' is less than 'minLength'")
        char = self.use("char")
        count = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self.add_rule(hint or "string", f'"\\"" {char}{count} "\\""')

    def grammar(self, schema: Any) -> str:
        root = self.convert(schema, "", "root-value")
        ws = self.use("ws")
        lines = [f"root ::= {root} {ws}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {_PRIMITIVES[name]}" for name in _PRIMITIVES if name in self.primitives]
        return "\n".join(lines) + "\n"


def json_schema_to_gbnf(schema: dict[str, Any], *, strict: bool) -> str:
    """A GBNF grammar (root rule ``root``) accepting only JSON instances of ``schema``.

    Raises :class:`InvalidSchemaError` (a 400) for a schema it cannot express; with
    ``strict`` also for keywords it cannot enforce.
    """
    return _Converter(schema, strict=strict).grammar(schema)


def _json_object_grammar() -> str:
    conv = _Converter({}, strict=False)
    conv.use("object")
    ws = conv.use("ws")
    lines = [f"root ::= object {ws}"]
    lines += [f"{name} ::= {_PRIMITIVES[name]}" for name in _PRIMITIVES if name in conv.primitives]
    return "\n".join(lines) + "\n"


JSON_OBJECT_GBNF = _json_object_grammar()
