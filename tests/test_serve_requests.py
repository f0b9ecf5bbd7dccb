"""Chat-completion requests: validation (422 for types, 400 for the rest), the ChatTask, and error bodies."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from minicpmv_gguf.serve.errors import ServeError, bad_request, error_body, unavailable
from minicpmv_gguf.serve.grammar import response_format_grammar
from minicpmv_gguf.serve.requests import parse_chat_request
from minicpmv_gguf.serve.task import ImageRef, Sampling, chat_task, freeze, thaw
from minicpmv_gguf.serve.toolcalls import ReplyParser, message_tool_calls

RELEASED_TEMPLATE = Path(__file__).parent / "data" / "released_chat_template.jinja"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "default": None},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}


def render(messages, **kwargs) -> str:
    """The released chat template, rendered as transformers and the runtime render it (tools included)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    return env.from_string(RELEASED_TEMPLATE.read_text()).render(
        messages=messages, add_generation_prompt=True, **kwargs
    )


def body(**fields) -> dict:
    return {"model": "minicpm-v-4.6", "messages": [{"role": "user", "content": "Hi"}], **fields}


def task(default_thinking: bool = False, **fields):
    return chat_task(parse_chat_request(body(**fields)), default_thinking=default_thinking)


def error(payload) -> ServeError:
    with pytest.raises(ServeError) as err:
        chat_task(parse_chat_request(payload))
    return err.value


def test_a_minimal_request():
    t = task()
    assert t.template_messages() == [{"role": "user", "content": "Hi"}]
    assert (t.model, t.images, t.sampling, t.thinking, t.grammar) == ("minicpm-v-4.6", (), Sampling(), False, None)
    assert (t.tools, t.tool_choice, t.tool_name, t.stream, t.include_usage) == ((), "none", None, False, False)


def test_the_body_may_be_bytes_or_text():
    raw = json.dumps(body(temperature=0))
    assert parse_chat_request(raw) == parse_chat_request(raw.encode()) == parse_chat_request(json.loads(raw))


def test_images_become_placeholders_in_order():
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                {"type": "text", "text": "and"},
                {"type": "image_url", "image_url": "https://example.com/b.png"},
            ],
        },
        {"role": "assistant", "content": "Two images."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///c.png", "detail": "high"}}]},
    ]
    t = task(messages=messages)
    assert t.images == (
        ImageRef(PNG, "low"),
        ImageRef("https://example.com/b.png", "auto"),
        ImageRef("file:///c.png", "high"),
    )
    assert t.template_messages()[1]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "and"},
        {"type": "image"},
    ]
    rendered = render(t.template_messages(), enable_thinking=t.thinking)
    assert rendered.count("<|image_pad|>") == 3
    assert "<|im_start|>user\n<|image_pad|>\nand\n<|image_pad|><|im_end|>" in rendered


def test_sampling():
    t = task(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repeat_penalty=1.05,
        max_tokens=64,
        max_completion_tokens=32,
        stop=["\n\n", ""],
        seed=7,
    )
    assert t.sampling == Sampling(0.7, 0.9, 40, 0.05, 1.05, 32, ("\n\n",), 7)
    assert task(stop="END", max_tokens=10, temperature=1).sampling == Sampling(
        temperature=1, max_tokens=10, stop=("END",)
    )


@pytest.mark.parametrize(
    "fields, thinking, with_default_on",
    [
        ({}, False, True),
        ({"chat_template_kwargs": {"enable_thinking": True}}, True, True),
        ({"chat_template_kwargs": {"enable_thinking": False, "other": 1}}, False, False),
        ({"reasoning_effort": "low"}, True, True),
        ({"reasoning_effort": "high"}, True, True),
        ({"reasoning_effort": "none"}, False, False),
        ({"reasoning_effort": None}, False, True),
        ({"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}}, False, False),
        ({"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}, True, True),
        ({"chat_template_kwargs": {}}, False, True),
    ],
)
def test_thinking(fields, thinking, with_default_on):
    """Off unless asked for (the Instruct template's default); the server's default applies when nothing is said."""
    assert task(**fields).thinking is thinking
    assert task(default_thinking=True, **fields).thinking is with_default_on


def test_streaming_flags():
    assert (task(stream=True).stream, task(stream=True).include_usage) == (True, False)
    assert task(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert task(stream=False, stream_options={"include_usage": True}).include_usage is False


def test_tools_and_tool_choice():
    t = task(tools=[WEATHER_TOOL])
    assert (t.tool_choice, t.tool_name, t.parallel_tool_calls) == ("auto", None, True)
    assert t.template_tools() == [WEATHER_TOOL]  # the schema's "default": null is kept
    named = task(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert (named.tool_choice, named.tool_name) == ("function", "get_weather")
    assert task(tools=[WEATHER_TOOL], tool_choice="required").tool_choice == "required"
    off = task(tools=[WEATHER_TOOL], tool_choice="none", parallel_tool_calls=False)
    assert (off.tools, off.template_tools(), off.parallel_tool_calls) == ((), None, False)


def test_tool_history_renders_with_argument_objects():
    """The template iterates `arguments|items`: JSON-string arguments from clients are parsed into objects."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2, "metric": true}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        {"role": "user", "content": "And Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"id": "c2", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "Rain"},
    ]
    t = task(messages=messages, tools=[WEATHER_TOOL])
    sent = t.template_messages()
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "days": 2, "metric": True}
    assert sent[2] == {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": "call_1"}
    rendered = render(sent, tools=t.template_tools(), enable_thinking=t.thinking)
    first = rendered.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert first == (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n"
        "</parameter>\n<parameter=metric>\nTrue\n</parameter>\n</function>\n</tool_call>"
    )
    assert '"name": "get_weather"' in rendered and "<tool_response>\nSunny, 21 C\n</tool_response>" in rendered
    # What the template wrote for a call, the reply parser reads back as the same arguments.
    parser = ReplyParser(t.template_tools())
    calls = message_tool_calls(parser.feed(first) + parser.finish())
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 2, "metric": True}


def test_reasoning_history():
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "Add."},
        {"role": "user", "content": "3+3?"},
    ]
    assert task(messages=messages).template_messages()[1] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "Add.",
    }


def test_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    t = task(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert t.grammar == response_format_grammar({"type": "json_schema", "json_schema": {"schema": schema}})
    assert task(response_format={"type": "json_object"}).grammar == response_format_grammar({"type": "json_object"})
    assert task(response_format={"type": "text"}).grammar is None
    assert task(response_format={"type": "json_object"}, tools=[WEATHER_TOOL], tool_choice="none").grammar


def test_unknown_fields_are_ignored():
    t = task(
        user="u1",
        logprobs=False,
        frequency_penalty=0.5,
        metadata={"a": 1},
        messages=[{"role": "user", "content": "Hi", "x-extra": 1}],
    )
    assert t.template_messages() == [{"role": "user", "content": "Hi"}]


def test_the_task_is_frozen():
    t = task(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], tools=[WEATHER_TOOL])
    with pytest.raises(AttributeError):
        t.thinking = True
    with pytest.raises(TypeError):
        t.messages[0]["role"] = "system"
    copy = t.template_messages()
    copy[0]["content"].append({"type": "text", "text": "more"})
    assert len(t.template_messages()[0]["content"]) == 1
    assert thaw(freeze({"a": [1, {"b": (2,)}]})) == {"a": [1, {"b": [2]}]}


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": 1, "content": "Hi"}]}, "messages[0].role"),
        ({"chat_template_kwargs": {"enable_thinking": "false"}}, "chat_template_kwargs.enable_thinking"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG, "detail": "4k"}}]}
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].image_url"),
    ],
)
def test_type_errors_are_422(fields, where):
    err = error(body(**fields))
    assert err.status == 422 and err.message.startswith(where + ":") and err.param == where, err.message
    assert "Input should" in err.message or "Field required" in err.message or "at least" in err.message


def test_a_body_that_is_not_an_object_is_422():
    assert error([1, 2]).status == 422 and error("[]").status == 422


def test_a_body_that_is_not_json_is_400():
    err = error(b'{"model": ')
    assert (err.status, err.message) == (400, "the request body is not valid JSON")
    assert error(b"\xff\xfe").status == 400


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"messages": [{"role": "developer", "content": "Hi"}]}, "messages[0]: unsupported role 'developer'"),
        ({"messages": [{"role": "function", "content": "x"}]}, "unsupported role 'function'"),
        ({"n": 2}, "n must be 1 (got 2)"),
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"role": "user"}]}, "messages[0]: a user message needs content"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "at least one user message"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
            "a system message must be the first message",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]},
            "messages[0].content[0]: a system message cannot contain images",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]: unsupported content part type 'input_audio'",
        ),
        (
            {"messages": [{"role": "user", "content": "a", "tool_calls": [{"function": {"name": "f"}}]}]},
            "only assistant messages have tool_calls",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{'city': 1}"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments is not valid JSON",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments must be a JSON object",
        ),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "'x', which is not",
        ),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "two tools have the same name"),
        ({"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}}, "cannot be combined with tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "integer", "maximum": 3}}}},
            'the keyword "maximum"',
        ),
    ],
)
def test_request_errors_are_400(fields, message):
    err = error(body(**fields))
    assert err.status == 400 and message in err.message, err.message


def test_the_openai_client_request_is_accepted():
    """The body the openai client really sends (captured by a mock transport: no network)."""
    import openai

    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(400, json=error_body("stop here", status=400))

    client = openai.OpenAI(
        api_key="k", base_url="http://127.0.0.1:9/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="minicpm-v-4.6",
            messages=[
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": PNG}}],
                },
            ],
            max_completion_tokens=16,
            temperature=0,
            stop=["\n"],
            seed=1,
            stream_options={"include_usage": True},
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            parallel_tool_calls=False,
            reasoning_effort="none",
            extra_body={"top_k": 20, "repeat_penalty": 1.05, "chat_template_kwargs": {"enable_thinking": False}},
        )
    assert err.value.body == error_body("stop here", status=400)["error"]
    assert (str(err.value.code), err.value.type) == ("400", "invalid_request_error")  # a str in newer clients
    t = chat_task(parse_chat_request(sent[0]))
    assert t.images == (ImageRef(PNG, "auto"),) and t.sampling.top_k == 20 and t.sampling.max_tokens == 16
    assert (t.tool_choice, t.parallel_tool_calls, t.thinking) == ("auto", False, False)


def test_error_bodies():
    assert bad_request("bad", param="n").body() == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": 400}
    }
    assert ServeError(401, "no key").body()["error"]["type"] == "authentication_error"
    assert ServeError(404, "no model", code="model_not_found").body()["error"]["code"] == "model_not_found"
    assert ServeError(413, "too big").body()["error"]["type"] == "invalid_request_error"
    busy = unavailable("queue full", retry_after=3)
    assert (busy.status, busy.headers(), busy.body()["error"]["type"]) == (
        503,
        {"Retry-After": "3"},
        "unavailable_error",
    )
    assert bad_request("x").headers() == {}
    assert str(bad_request("message")) == "message"
