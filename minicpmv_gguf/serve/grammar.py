"""`response_format` as a GBNF grammar for llama.cpp's grammar sampler.

Schemas are converted by llama-cpp-python's own converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`).
Before that, the schema is checked keyword by keyword: a keyword that constrains values but that the
converter does not enforce (`minimum`, `not`, `uniqueItems`, an unknown `format`, ...) is a 400 error, so a
client never receives JSON that silently breaks its schema. Annotations (`title`, `description`, ...) are
dropped, and an empty schema (or `true`) means any JSON value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import ServeError

# Keywords that only describe: they are removed before conversion.
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly"}
    | {"writeOnly", "contentEncoding", "contentMediaType"}
)
# Keywords llama-cpp-python's converter turns into grammar rules.
ENFORCED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems"}
    | {"enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "format"}
    | {"minLength", "maxLength"}
)
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
ANY_VALUE = {"type": ["object", "array", "string", "number", "boolean", "null"]}
JSON_OBJECT = {"type": "object"}
_MAX_DEPTH = 64

# llama-server's converter allows up to 20 spaces or tabs at each whitespace position, and a small model
# can spend its whole max_tokens there. llama-cpp-python's allows one optional space; this pins that rule
# so a future converter cannot widen it: JSON needs no whitespace at all.
SPACE_RULE = 'space ::= " "?'
_SPACE_LINE = re.compile(r"^space ::= .*$", re.MULTILINE)


def _unsupported(where: str, what: str) -> ServeError:
    return ServeError(400, f"response_format: {what} (at {where}) is not supported", param="response_format")


def _check_type(declared: Any, where: str) -> None:
    names = declared if isinstance(declared, list) else [declared]
    for name in names:
        if name not in TYPES:
            raise _unsupported(where, f"the type {json.dumps(name)}")


def clean_schema(schema: Any, where: str = "#", depth: int = 0) -> dict:
    """The schema without annotations, empty schemas spelled out as any value.

    Raises:
        ServeError: 400 for a keyword, type, format or $ref the grammar cannot enforce.
    """
    if depth > _MAX_DEPTH:
        raise _unsupported(where, f"a schema nested deeper than {_MAX_DEPTH} levels")
    if schema is True:
        return dict(ANY_VALUE)
    if not isinstance(schema, Mapping):
        raise _unsupported(where, "a schema that is not a JSON object" if schema is not False else "a false schema")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise _unsupported(where, f"the keyword {json.dumps(key)}")
        if key == "items" and value is False and "prefixItems" in schema:
            out[key] = False  # a closed tuple: the converter then allows exactly the prefixItems
            continue
        out[key] = _clean_value(key, value, f"{where}/{key}", depth + 1)
    return out or dict(ANY_VALUE)


def _clean_value(key: str, value: Any, where: str, depth: int) -> Any:
    if key in ("properties", "$defs", "definitions"):
        if not isinstance(value, Mapping):
            raise _unsupported(where, f"{key} that is not an object")
        return {name: clean_schema(sub, f"{where}/{name}", depth) for name, sub in value.items()}
    if key in ("anyOf", "oneOf", "allOf", "prefixItems") or (key == "items" and isinstance(value, list)):
        if not isinstance(value, list) or not value:
            raise _unsupported(where, f"{key} that is not a non-empty list")
        return [clean_schema(sub, f"{where}/{i}", depth) for i, sub in enumerate(value)]
    if key == "items" or (key == "additionalProperties" and not isinstance(value, bool)):
        return clean_schema(value, where, depth)
    if key == "type":
        _check_type(value, where)
    elif key in ("required", "enum") and not (isinstance(value, list) and (value or key == "required")):
        raise _unsupported(where, f"{key} that is not a list" + (" of values" if key == "enum" else ""))
    elif key == "required" and not all(isinstance(name, str) for name in value):
        raise _unsupported(where, "required names that are not strings")
    elif key == "format" and value not in FORMATS:
        raise _unsupported(where, f"the format {json.dumps(value)}")
    elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
        raise _unsupported(where, "a $ref outside the schema")
    return value


def json_schema_grammar(schema: Any) -> str:
    """The GBNF grammar of JSON values that match `schema`.

    Raises:
        ServeError: 400 for a schema the converter cannot turn into a grammar.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    cleaned = clean_schema(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(cleaned))
    # The converter reports what it cannot convert with assert, ValueError or a failed lookup.
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ServeError(
            400, f"response_format: the JSON schema cannot be turned into a grammar: {err}", param="response_format"
        ) from err
    return _SPACE_LINE.sub(SPACE_RULE, grammar)


def response_format_grammar(response_format: Mapping | None) -> str | None:
    """The grammar for an OpenAI `response_format`; None for plain text.

    `{"type": "json_object"}` gives any JSON object (or, as llama-server accepts, the object's `schema`);
    `{"type": "json_schema", "json_schema": {"schema": ...}}` gives values matching the schema.

    Raises:
        ServeError: 400 for an unknown type or a schema the grammar cannot enforce.
    """
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar(response_format.get("schema") or JSON_OBJECT)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return json_schema_grammar(JSON_OBJECT if schema is None else schema)
    raise ServeError(400, f"response_format: unknown type {json.dumps(kind)}", param="response_format")
