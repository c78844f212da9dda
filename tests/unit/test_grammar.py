"""JSON Schema -> GBNF: the grammar accepts valid instances and refuses invalid ones.

No model here: the GBNF our converter writes (non-recursive schemas) is turned into
a Python regex by a tiny translator (recursion cut at three levels), and documents are matched against it. That
llama.cpp itself parses every grammar, and that the model's constrained output
validates, is checked in tests/model/test_api_surface_model.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from server.errors import InvalidRequestError
from server.prompting.grammar import JSON_OBJECT_GBNF, InvalidSchemaError, json_schema_to_gbnf

_TOKEN = re.compile(
    r'\s*(?:(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])|(?P<name>[a-zA-Z0-9-]+)'
    r"|(?P<rep>\{\d+(?:,\d*)?\}|[?*+])|(?P<op>[()|]))"
)


def gbnf_to_regex(grammar: str) -> re.Pattern[str]:
    rules = dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())

    def literal(text: str) -> str:
        value = json.loads(text) if "\\x" not in text else text[1:-1].encode().decode("unicode_escape")
        return re.escape(value)

    def expand(name: str, path: tuple[str, ...]) -> str:
        # Recursive rules (JSON values in values) are cut at a few levels: enough for test documents.
        if path.count(name) >= 3:
            return "(?!)"
        out = []
        for m in _TOKEN.finditer(rules[name]):
            if m["lit"]:
                out.append(literal(m["lit"]))
            elif m["cls"]:
                out.append(m["cls"])
            elif m["name"]:
                out.append("(?:" + expand(m["name"], (*path, name)) + ")")
            elif m["rep"]:
                out.append(m["rep"])
            elif m["op"] == "(":
                out.append("(?:")
            else:
                out.append(str(m["op"]))
        return "".join(out)

    return re.compile(expand("root", ()), re.DOTALL)


def accepts(grammar: str, document: Any, *, compact: bool = False) -> bool:
    text = json.dumps(document, separators=(",", ":") if compact else None)
    return gbnf_to_regex(grammar).fullmatch(text) is not None


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "nick": {"type": "string"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_required_and_optional_properties() -> None:
    g = json_schema_to_gbnf(PERSON, strict=False)
    assert accepts(g, {"name": "Ann", "age": 3})
    assert accepts(g, {"name": "Ann", "age": 3, "nick": "A"}, compact=True)
    assert not accepts(g, {"name": "Ann"})  # age is required
    assert not accepts(g, {"name": "Ann", "age": 3.5})  # integer
    assert not accepts(g, {"name": "Ann", "age": 3, "extra": 1})  # no additional properties


def test_all_optional_properties_allow_any_subset() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}}}
    g = json_schema_to_gbnf(schema, strict=False)
    for doc in ({}, {"a": 1}, {"b": True}, {"a": 1, "b": False}):
        assert accepts(g, doc), doc
    assert not accepts(g, {"b": True, "a": 1})  # declaration order keeps the grammar small


def test_strict_makes_every_property_required() -> None:
    g = json_schema_to_gbnf(PERSON, strict=True)
    assert accepts(g, {"name": "Ann", "age": 3, "nick": "A"})
    assert not accepts(g, {"name": "Ann", "age": 3})


def test_primitives_enum_const_and_formats() -> None:
    g = json_schema_to_gbnf(
        {
            "type": "array",
            "prefixItems": [
                {"enum": ["red", 1, None]},
                {"const": 'say "hi"\n'},
                {"type": "number"},
                {"type": "string", "format": "date"},
                {"type": ["string", "null"], "maxLength": 3},
            ],
        },
        strict=False,
    )
    assert accepts(g, ["red", 'say "hi"\n', -1.5e3, "2024-02-29", None])
    assert accepts(g, [None, 'say "hi"\n', 0, "2024-12-01", "abc"])
    assert not accepts(g, ["blue", 'say "hi"\n', 1, "2024-02-29", None])
    assert not accepts(g, ["red", 'say "hi"\n', 1, "2024-13-01", None])
    assert not accepts(g, ["red", 'say "hi"\n', 1, "2024-02-29", "abcd"])


def test_array_bounds() -> None:
    g = json_schema_to_gbnf({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3}, strict=False)
    assert not accepts(g, [True])
    assert accepts(g, [True, False]) and accepts(g, [True, False, True])
    assert not accepts(g, [True, False, True, False])


def test_refs_anyof_and_allof() -> None:
    schema = {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "type": "object",
        "properties": {
            "at": {"$ref": "#/$defs/point"},
            "tag": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]},
            "both": {
                "allOf": [{"$ref": "#/$defs/point"}, {"properties": {"y": {"type": "integer"}}, "required": ["y"]}]
            },
        },
        "required": ["at", "tag", "both"],
    }
    g = json_schema_to_gbnf(schema, strict=False)
    assert accepts(g, {"at": {"x": 1}, "tag": "ab", "both": {"x": 1, "y": 2}})
    assert accepts(g, {"at": {"x": 1}, "tag": 7, "both": {"x": 1, "y": 2}})
    assert not accepts(g, {"at": {"x": 1}, "tag": "abc", "both": {"x": 1, "y": 2}})
    assert not accepts(g, {"at": {"x": 1}, "tag": 7, "both": {"x": 1}})


def test_recursive_schema_compiles_to_a_self_referring_rule() -> None:
    schema = {
        "$defs": {
            "node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}}
        },
        "$ref": "#/$defs/node",
    }
    g = json_schema_to_gbnf(schema, strict=False)
    rules = dict(line.split(" ::= ", 1) for line in g.strip().splitlines())
    assert "ref-node" in rules and any("ref-node" in body for name, body in rules.items() if name != "ref-node")


def test_additional_properties_schema_and_free_objects() -> None:
    g = json_schema_to_gbnf({"type": "object", "additionalProperties": {"type": "integer"}}, strict=False)
    assert accepts(g, {}) and accepts(g, {"a": 1, "b": 2})
    assert not accepts(g, {"a": "x"})
    assert accepts(json_schema_to_gbnf({"type": "object"}, strict=False), {"a": [1, {"b": None}]})


def test_json_object_grammar_takes_objects_only() -> None:
    assert accepts(JSON_OBJECT_GBNF, {"a": [1, 2.5, "x", True, None, {"b": {}}]})
    assert not accepts(JSON_OBJECT_GBNF, [1, 2])
    assert not accepts(JSON_OBJECT_GBNF, "text")


def test_whitespace_is_bounded() -> None:
    g = json_schema_to_gbnf(
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, strict=False
    )
    pattern = gbnf_to_regex(g)
    assert pattern.fullmatch('{\n  "a": 1\n}')
    assert not pattern.fullmatch("{" + " " * 40 + '"a": 1}')


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a+$"},
        {"type": "integer", "minimum": 0},
        {"type": "array", "uniqueItems": True},
        {"type": "string", "format": "email"},
        {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True},
    ],
)
def test_strict_refuses_what_a_grammar_cannot_enforce(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidSchemaError) as err:
        json_schema_to_gbnf(schema, strict=True)
    assert isinstance(err.value, InvalidRequestError) and err.value.status_code == 400
    json_schema_to_gbnf(schema, strict=False)  # best effort without strict


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "wat"},
        {"enum": []},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "array", "minItems": 3, "maxItems": 1},
    ],
)
def test_broken_schemas_are_400(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidSchemaError):
        json_schema_to_gbnf(schema, strict=False)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": "x"},
        {"type": "string", "maxLength": -1},
        {"type": "string", "minLength": 3, "maxLength": 2},
        {"type": "array", "minItems": 1.5},
        {"type": "array", "maxItems": True},
    ],
)
def test_a_bad_length_bound_is_a_400_not_a_crash(schema: dict[str, object]) -> None:
    with pytest.raises(InvalidSchemaError, match=r"Length|Items"):
        json_schema_to_gbnf(schema, strict=False)
