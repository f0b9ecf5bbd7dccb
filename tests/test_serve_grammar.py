"""response_format grammars, compiled and run by llama.cpp's grammar sampler with the tiny model's vocab."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

from minicpmv_gguf.native import capture_log
from minicpmv_gguf.serve.errors import ServeError
from minicpmv_gguf.serve.grammar import clean_schema, json_schema_grammar, response_format_grammar

TINY = Path(__file__).parent.parent / "examples" / "tiny-minicpmv46"

PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name", "maxLength": 20},
        "age": {"type": "integer"},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "kind": {"enum": ["cat", "dog"]},
        "pet": {"$ref": "#/$defs/Pet"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}},
}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """The tiny LM's vocab (a vocab-only load of its GGUF): what llama.cpp compiles grammars against."""
    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.native import llama_cpp

    llama_cpp = llama_cpp()  # the toolkit's loader: its log callback is in place
    gguf = tmp_path_factory.mktemp("grammar") / "tiny.gguf"
    convert_lm(TINY, gguf, outtype="f16")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with capture_log():
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def _tokens(vocab, text: str) -> list[int]:
    import llama_cpp

    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
    assert n >= 0
    return list(buf[:n])


def _sampler(vocab, grammar: str):
    import llama_cpp

    with capture_log() as log:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp did not compile the grammar:\n" + "\n".join(log)
    return sampler


def accepts(vocab, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write `text`, token by token."""
    import llama_cpp

    sampler = _sampler(vocab, grammar)
    try:
        for token in _tokens(vocab, text):
            cand = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            array = llama_cpp.llama_token_data_array(cand, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if cand[0].logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},
        {},
        PERSON,
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
        {"type": "string", "pattern": "^[a-z]+-[0-9]{2}$"},
        {"type": ["integer", "null"]},
        {"type": "object", "additionalProperties": {"type": "number"}},
        {"allOf": [{"$ref": "#/$defs/A"}], "$defs": {"A": {"properties": {"a": {"type": "integer"}}}}},
        {"type": "string", "format": "uuid"},
    ],
)
def test_grammars_compile_in_llama_cpp(vocab, schema):
    import llama_cpp

    llama_cpp.llama_sampler_free(_sampler(vocab, json_schema_grammar(schema)))


@pytest.mark.parametrize(
    "text, ok",
    [
        ('{"name": "Ada", "age": 36}', True),
        ('{"name":"Ada","age":36,"born":"1815-12-10","tags":["a","b"],"kind":"cat"}', True),
        ('{"name": "Ada", "age": 36, "pet": {"legs": 4}, "note": null}', True),
        ('{"age": 36, "name": "Ada"}', False),  # properties come in schema order
        ('{"name": "Ada"}', False),  # age is required
        ('{"name": "Ada", "age": "36"}', False),
        ('{"name": "Ada", "age": 36, "extra": 1}', False),
        ('{"name": "Ada", "age": 36, "tags": ["a", "b", "c"]}', False),
        ('{"name": "Ada", "age": 36, "kind": "cow"}', False),
        ('{"name": "Ada", "age": 36, "born": "1815-13-10"}', False),
        ('{"name": "' + "x" * 21 + '", "age": 1}', False),
    ],
)
def test_the_sampler_enforces_the_schema(vocab, text, ok):
    assert accepts(vocab, json_schema_grammar(PERSON), text) is ok


@pytest.mark.parametrize("gap", ["", " "])
def test_one_space_is_allowed_where_json_allows_whitespace(vocab, gap):
    text = "{" + gap + '"name":' + gap + '"Ada",' + gap + '"age":' + gap + "1" + gap + "}"
    assert accepts(vocab, json_schema_grammar(PERSON), text)


@pytest.mark.parametrize("text", ['{  "a": 1}', '{"a":  1}', '{\n"a": 1}', '{\t"a": 1}', '{"a": 1}  '])
def test_runs_of_whitespace_are_not(vocab, text):
    """A small model can spend max_tokens on whitespace that llama-server's grammars allow (up to 20)."""
    grammar = response_format_grammar({"type": "json_object"})
    assert accepts(vocab, grammar, text.replace("  ", " ").replace("\n", "").replace("\t", ""))
    assert not accepts(vocab, grammar, text)
    assert 'space ::= " "?' in grammar.splitlines()


def test_json_object(vocab):
    grammar = response_format_grammar({"type": "json_object"})
    assert accepts(vocab, grammar, '{"any": [1, {"thing": null}], "b": true}')
    assert not accepts(vocab, grammar, "[1, 2]")
    assert not accepts(vocab, grammar, "Sure! {")


def test_an_empty_schema_is_any_value(vocab):
    for text in ['{"a": 1}', "[1]", '"s"', "1.5", "true", "null"]:
        assert accepts(vocab, json_schema_grammar({"description": "anything"}), text)


def test_response_formats():
    person = response_format_grammar({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert person == json_schema_grammar(PERSON)
    assert response_format_grammar({"type": "json_object", "schema": PERSON}) == person  # llama-server's form
    any_object = json_schema_grammar({"type": "object"})
    assert response_format_grammar({"type": "json_object"}) == any_object
    assert response_format_grammar({"type": "json_schema", "json_schema": {"name": "x"}}) == any_object
    assert response_format_grammar({"type": "text"}) is None
    assert response_format_grammar(None) is None


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "integer", "minimum": 0}, 'the keyword "minimum" (at #)'),
        ({"properties": {"a": {"not": {"type": "null"}}}}, 'the keyword "not" (at #/properties/a)'),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, 'the keyword "uniqueItems"'),
        ({"type": "string", "format": "email"}, 'the format "email" (at #/format)'),
        ({"type": "date"}, 'the type "date"'),
        ({"$ref": "https://example.com/schema.json"}, "a $ref outside the schema"),
        ({"$ref": "#/$defs/Missing"}, "cannot be turned into a grammar"),
        ({"type": "string", "pattern": "[a-z]+"}, "cannot be turned into a grammar: Pattern must start with"),
        ({"type": "array", "items": False}, "a false schema (at #/items)"),
        ({"enum": []}, "enum that is not a list of values"),
        ({"required": "name"}, "required that is not a list"),
        ([{"type": "object"}], "a schema that is not a JSON object (at #)"),
    ],
)
def test_unsupported_schemas_are_400(schema, message):
    with pytest.raises(ServeError) as err:
        response_format_grammar({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert err.value.status == 400 and message in err.value.message, err.value.message
    assert err.value.body()["error"]["param"] == "response_format"


def test_deep_schemas_are_400():
    schema: dict = {"type": "integer"}
    for _ in range(100):
        schema = {"type": "array", "items": schema}
    with pytest.raises(ServeError, match="nested deeper"):
        json_schema_grammar(schema)


def test_unknown_type_is_400():
    with pytest.raises(ServeError, match='unknown type "xml"'):
        response_format_grammar({"type": "xml"})


def test_annotations_are_dropped():
    cleaned = clean_schema(PERSON)
    assert "title" not in cleaned and "description" not in cleaned["properties"]["name"]
    assert json.dumps(cleaned["$defs"]) == json.dumps(PERSON["$defs"])
