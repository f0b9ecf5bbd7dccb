"""The streamed reply parser (content, reasoning, Qwen3-Coder XML tool calls) and its OpenAI shapes.

Every vector is parsed whole, split in two at every character, one character at a time, as UTF-8 bytes
split anywhere (decoded incrementally, as a detokenizer does) and split at random places: the events,
with adjacent text joined, must be the same every time.
"""

from __future__ import annotations

import codecs
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicpmv_gguf.serve.toolcalls import (
    Content,
    Reasoning,
    ReplyParser,
    ToolCallArguments,
    ToolCallStart,
    finish_reason,
    forced_prefix,
    merge_text,
    message_tool_calls,
    new_call_id,
    reply_message,
    schema_types,
    stream_deltas,
    typed_value,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "typed",
            "parameters": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "x": {"type": "number"},
                    "flag": {"type": "boolean"},
                    "opts": {"type": "object"},
                    "items": {"type": "array", "items": {"type": "integer"}},
                    "code": {"type": "string"},
                    "maybe": {"type": ["integer", "null"]},
                    "choice": {"enum": [1, 2, 3]},
                },
            },
        },
    },
]


def call(name: str, **params: str) -> str:
    """A call as the model (and the chat template) writes it."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def events_for(index: int, name: str, args: dict) -> list:
    return [ToolCallStart(index, f"call_{index}", name), ToolCallArguments(index, json.dumps(args, ensure_ascii=False))]


WEATHER = call("get_weather", city="Paris", days="3")
CODE = "if a < b:\n    print('<tag>', \"</b>\")\n\n# done"
TYPED = call(
    "typed", n="42", x="-1.5e3", flag="True", opts='{"a": [1, {"b": null}]}', items="[1, 2, 3]", code=CODE, maybe="None"
)
TYPED_ARGS = {
    "n": 42,
    "x": -1500.0,
    "flag": True,
    "opts": {"a": [1, {"b": None}]},
    "items": [1, 2, 3],
    "code": CODE,
    "maybe": None,
}
UNTERMINATED = "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"

# (id, text, parser options, expected events with adjacent text joined)
VECTORS = [
    ("one call", WEATHER, {}, events_for(0, "get_weather", {"city": "Paris", "days": 3})),
    (
        "two calls",
        WEATHER + "\n" + call("get_weather", city="Oslo"),
        {},
        events_for(0, "get_weather", {"city": "Paris", "days": 3}) + events_for(1, "get_weather", {"city": "Oslo"}),
    ),
    ("typed parameters", TYPED, {}, events_for(0, "typed", TYPED_ARGS)),
    (
        "values that do not parse stay strings",
        call("typed", n="forty-two", opts="{'a': 1}", x="NaN", choice="2"),
        {},
        events_for(0, "typed", {"n": "forty-two", "opts": "{'a': 1}", "x": "NaN", "choice": 2}),
    ),
    (
        "think block in the content",
        "<think>\nI should call.\n</think>\n\n" + WEATHER,
        {},
        [Content("<think>\nI should call.\n</think>\n\n")] + events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "reasoning then a call",
        "I should call.\n</think>\n\n" + WEATHER,
        {"thinking": True},
        [Reasoning("I should call.")] + events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "a call ends the reasoning without </think>",
        "\nLet me call.\n" + WEATHER,
        {"thinking": True},
        [Reasoning("Let me call.\n")] + events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "reasoning then content",
        "Two and two.\n\n</think>\n\nThe answer is 4.\n",
        {"thinking": True},
        [Reasoning("Two and two.\n"), Content("The answer is 4.\n")],
    ),
    (
        "text before a call",
        "Let me check the weather.\n\n" + WEATHER,
        {},
        [Content("Let me check the weather.\n\n")] + events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "text after a call",
        WEATHER + "\n\nDone <b>.",
        {},
        events_for(0, "get_weather", {"city": "Paris", "days": 3}) + [Content("\n\nDone <b>.")],
    ),
    (
        "unknown function",
        call("launch_rocket", count="3", target="Mars"),
        {},
        events_for(0, "launch_rocket", {"count": "3", "target": "Mars"}),
    ),
    ("unterminated call at the end", UNTERMINATED, {}, [Content(UNTERMINATED)]),
    (
        "not a call",
        "<tool_call>\nnot a call</tool_call> ok",
        {},
        [Content("<tool_call>\nnot a call</tool_call> ok")],
    ),
    (
        "a restarted call",
        "<tool_call>\n" + WEATHER,
        {},
        [Content("<tool_call>\n")] + events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "a name with a newline",
        "<tool_call>\n<function=get\nweather>\n</function>\n</tool_call>",
        {},
        [Content("<tool_call>\n<function=get\nweather>\n</function>\n</tool_call>")],
    ),
    (
        "no </tool_call> at the end",
        WEATHER.removesuffix("\n</tool_call>"),
        {},
        events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "no </function>",
        WEATHER.replace("</function>\n", ""),
        {},
        events_for(0, "get_weather", {"city": "Paris", "days": 3}),
    ),
    (
        "a call without parameters",
        "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>",
        {},
        events_for(0, "get_weather", {}),
    ),
    ("tag-like text", "a <tool b <tool_cal <function=x> <", {}, [Content("a <tool b <tool_cal <function=x> <")]),
    (
        "non-ASCII",
        "Voilà ☀ 東京:\n" + call("get_weather", city="Zürich 東京"),
        {},
        [Content("Voilà ☀ 東京:\n")] + events_for(0, "get_weather", {"city": "Zürich 東京"}),
    ),
    ("tool calls not parsed", WEATHER, {"parse_tool_calls": False}, [Content(WEATHER)]),
    ("empty reply", "", {"thinking": True}, []),
]
IDS = [v[0] for v in VECTORS]


def parse(pieces, options: dict) -> list:
    counter = itertools.count()
    parser = ReplyParser(TOOLS, new_id=lambda: f"call_{next(counter)}", **options)
    events = [ev for piece in pieces for ev in parser.feed(piece)]
    return merge_text(events + parser.finish())


@pytest.mark.parametrize("name, text, options, expected", VECTORS, ids=IDS)
def test_whole(name, text, options, expected):
    assert parse([text], options) == expected


@pytest.mark.parametrize("name, text, options, expected", VECTORS, ids=IDS)
def test_split_at_every_character(name, text, options, expected):
    for i in range(len(text) + 1):
        assert parse([text[:i], text[i:]], options) == expected, f"split at {i}: {text[:i]!r} | {text[i:]!r}"


@pytest.mark.parametrize("name, text, options, expected", VECTORS, ids=IDS)
def test_one_character_at_a_time(name, text, options, expected):
    assert parse(list(text), options) == expected


@pytest.mark.parametrize("name, text, options, expected", VECTORS, ids=IDS)
def test_split_at_every_byte(name, text, options, expected):
    data = text.encode()
    for i in range(len(data) + 1):
        decoder = codecs.getincrementaldecoder("utf-8")()
        pieces = [decoder.decode(data[:i]), decoder.decode(data[i:], final=True)]
        assert parse(pieces, options) == expected, f"split at byte {i}"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VECTORS), st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_split_at_random_places(vector, cuts):
    _, text, options, expected = vector
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]
    assert parse(pieces, options) == expected


def test_content_is_held_back_only_while_it_could_open_a_call():
    parser = ReplyParser(TOOLS)
    assert parser.feed("Hello <tool") == [Content("Hello ")]
    assert parser.feed("_c") == []
    assert parser.feed("x") == [Content("<tool_cx")]
    assert parser.feed(" a < b") == [Content(" a < b")]


def test_a_call_is_reported_when_its_function_closes():
    parser = ReplyParser(TOOLS, new_id=lambda: "call_0")
    assert parser.feed(WEATHER.removesuffix("</function>\n</tool_call>")) == []
    assert parser.feed("</function>") == events_for(0, "get_weather", {"city": "Paris", "days": 3})
    assert parser.feed("\n</tool_call>") == []
    assert parser.finish() == []


def test_reasoning_and_content_stream_as_they_come():
    parser = ReplyParser(TOOLS, thinking=True)
    assert parser.feed("\nHmm, 2+2") == [Reasoning("Hmm, 2+2")]
    assert parser.feed("\n") == []  # could be the newline of "\n</think>"
    assert parser.feed("</think>\n\n4") == [Content("4")]


def test_call_ids():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("call_") and len(i) == 29 for i in ids)


@pytest.mark.parametrize(
    "raw, schema, value",
    [
        ("42", {"type": "integer"}, 42),
        (" 42 ", {"type": "integer"}, 42),
        ("4.5", {"type": "number"}, 4.5),
        ("false", {"type": "boolean"}, False),
        ("TRUE", {"type": "boolean"}, True),
        ("null", {"type": "null"}, None),
        ("[1, 2]", {"type": "array"}, [1, 2]),
        ('{"k": "v"}', {"properties": {"k": {}}}, {"k": "v"}),
        ("42", {"type": "string"}, "42"),
        ("  spaced  ", {"type": "string"}, "  spaced  "),
        ("42", {"type": ["string", "integer"]}, 42),
        ("hello", {"type": ["string", "null"]}, "hello"),
        ("null", {"type": ["string", "null"]}, None),
        ('"quoted"', {"type": ["string", "integer"]}, '"quoted"'),
        ("7", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, 7),
        ("b", {"enum": ["a", "b"]}, "b"),
        ("Infinity", {"type": "number"}, "Infinity"),
        ("42", None, "42"),
        ("42", {"description": "no type"}, "42"),
    ],
)
def test_typed_value(raw, schema, value):
    assert typed_value(raw, schema) == value and type(typed_value(raw, schema)) is type(value)


def test_schema_types():
    assert schema_types({"type": ["integer", "null"]}) == {"integer", "null"}
    assert schema_types({"oneOf": [{"type": "string"}, {"items": {}}]}) == {"string", "array"}
    assert schema_types({"const": True}) == {"boolean"}
    assert schema_types("string") == set()


def test_stream_deltas():
    events = [Content("Let me "), Content("look."), *events_for(0, "get_weather", {"city": "Paris"}), Reasoning("r")]
    assert stream_deltas(events) == [
        {"content": "Let me look."},
        {
            "tool_calls": [
                {"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]},
        {"reasoning_content": "r"},
    ]


def test_reply_message():
    events = parse(["Checking.\n\n" + WEATHER + "\n" + call("get_weather", city="Oslo")], {})
    assert reply_message(events) == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ev.arguments}}
            if i == 0
            else {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ev.arguments}}
            for i, ev in enumerate(e for e in events if isinstance(e, ToolCallArguments))
        ],
    }
    assert reply_message(parse([WEATHER], {}))["content"] is None
    thought = reply_message(parse(["Because.\n</think>\n\nYes."], {"thinking": True}))
    assert thought == {"role": "assistant", "content": "Yes.", "reasoning_content": "Because."}
    assert message_tool_calls([Content("x")]) == []


def test_finish_reason():
    made = parse([WEATHER], {})
    assert finish_reason(made, "stop") == "tool_calls"
    assert finish_reason(made, "length") == "length"
    assert finish_reason([Content("hi")], "stop") == "stop"


def test_forced_prefix_starts_a_call():
    assert forced_prefix("auto") == forced_prefix("none") == ""
    for choice, name in [("required", None), ("function", "get_weather")]:
        parser = ReplyParser(TOOLS, new_id=lambda: "call_0", thinking=True)
        head = forced_prefix(choice, name)
        rest = WEATHER.removeprefix("<tool_call>\n<function=get_weather>\n" if name else "<tool_call>\n")
        events = merge_text(parser.feed(head) + parser.feed(rest) + parser.finish())
        assert events == events_for(0, "get_weather", {"city": "Paris", "days": 3})


def test_the_openai_client_assembles_the_streamed_calls():
    """openai's own stream accumulator (what client.chat.completions.stream() uses) reads our deltas."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    events = parse(["Checking.\n\n" + TYPED + "\n" + WEATHER], {})
    state = ChatCompletionStreamState()
    deltas = [{"role": "assistant", "content": None}, *stream_deltas(events), {}]
    for i, delta in enumerate(deltas):
        finish = finish_reason(events, "stop") if i == len(deltas) - 1 else None
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking.\n\n"
    calls = choice.message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [("call_0", "typed"), ("call_1", "get_weather")]
    assert json.loads(calls[0].function.arguments) == TYPED_ARGS


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<function=",
    "get_weather>",
    "typed>",
    "</function>",
    "<parameter=",
    "city>",
    "n>",
    "</parameter>",
    "</think>",
    "\n",
    " ",
    "x",
    "<",
    ">",
    "/",
    "7",
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    st.lists(st.integers(min_value=0, max_value=300), max_size=10),
    st.booleans(),
)
def test_any_text_parses_the_same_however_it_is_split(text, cuts, thinking):
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]
    whole = parse([text], {"thinking": thinking})
    assert parse(pieces, {"thinking": thinking}) == whole
    if not any(isinstance(ev, ToolCallStart) for ev in whole):  # without calls, no text but layout is dropped
        think, call = text.find("</think>"), text.find("<tool_call>")
        ends_reasoning = thinking and think >= 0 and (call < 0 or think < call)
        expected = text[:think] + text[think + len("</think>") :] if ends_reasoning else text
        assert "".join(ev.text for ev in whole).replace("\n", "") == expected.replace("\n", "")
