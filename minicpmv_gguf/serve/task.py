"""The neutral, frozen description of a chat completion that the engine runs (no HTTP, no pydantic).

chat_task turns a request that parse_chat_request accepted into a ChatTask: messages as the chat template
reads them (each image replaced by `{"type": "image"}`, the images listed in the same order in `images`),
sampling settings, the thinking flag, tools, tool_choice and the response_format grammar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import ServeError
from .grammar import response_format_grammar
from .requests import ChatRequest, ContentPart, ImageURL, Message, NamedToolChoice, Tool, tool_arguments


@dataclass(frozen=True)
class ImageRef:
    """An image of the conversation, in the order of the `{"type": "image"}` placeholders."""

    url: str
    detail: str  # "auto" | "low" | "high"


@dataclass(frozen=True)
class Sampling:
    """The request's sampling settings; None is "the server's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


def freeze(value: Any) -> Any:
    """JSON-like data made read-only: dicts as mapping proxies, lists as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A fresh, plain copy of frozen data (what jinja's tojson and the template's `|items` expect)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ChatTask:
    """A chat completion for the engine, independent of HTTP and of pydantic."""

    model: str
    messages: tuple  # frozen template messages; use template_messages()
    images: tuple[ImageRef, ...]
    sampling: Sampling
    thinking: bool  # the template's enable_thinking
    tools: tuple  # frozen OpenAI tools for the template, empty when tool_choice is "none"
    tool_choice: str  # "auto" | "none" | "required" | "function" (then tool_name names it)
    tool_name: str | None
    parallel_tool_calls: bool
    grammar: str | None  # GBNF from response_format
    stream: bool
    include_usage: bool

    def template_messages(self) -> list[dict]:
        return thaw(self.messages)

    def template_tools(self) -> list[dict] | None:
        return thaw(self.tools) or None


def _template_content(content: str | list[ContentPart] | None, images: list[ImageRef]) -> Any:
    if not isinstance(content, list):
        return content
    parts: list[dict] = []
    for part in content:
        if part.type == "text":
            parts.append({"type": "text", "text": part.text})
            continue
        image = part.image_url if isinstance(part.image_url, ImageURL) else ImageURL(url=part.image_url)
        images.append(ImageRef(image.url, image.detail))
        parts.append({"type": "image"})
    return parts


def _template_message(i: int, message: Message, images: list[ImageRef]) -> dict:
    out: dict[str, Any] = {"role": message.role, "content": _template_content(message.content, images)}
    reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": tool_arguments(
                        call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"
                    ),
                },
            }
            for j, call in enumerate(message.tool_calls)
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _template_tool(tool: Tool) -> dict:
    """The tool as the template writes it into the system prompt (`tool | tojson`), schema untouched."""
    fn = tool.function
    function = {"name": fn.name, "description": fn.description, "parameters": fn.parameters}
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def thinking_on(request: ChatRequest, default: bool = False) -> bool:
    """chat_template_kwargs.enable_thinking if given, else on for any reasoning_effort but "none"."""
    kwargs = request.chat_template_kwargs
    if kwargs is not None and kwargs.enable_thinking is not None:
        return kwargs.enable_thinking
    if request.reasoning_effort is not None:
        return request.reasoning_effort != "none"
    return default


def chat_task(request: ChatRequest, *, default_thinking: bool = False) -> ChatTask:
    """The engine's view of a request that parse_chat_request accepted.

    Raises:
        ServeError: 400 for a response_format the grammar cannot enforce, or one combined with tools.
    """
    images: list[ImageRef] = []
    messages = [_template_message(i, m, images) for i, m in enumerate(request.messages)]
    choice = request.tool_choice or ("auto" if request.tools else "none")
    kind, name = ("function", choice.function.name) if isinstance(choice, NamedToolChoice) else (choice, None)
    tools = [_template_tool(tool) for tool in request.tools or ()] if kind != "none" else []
    response_format = request.response_format
    grammar = response_format_grammar(response_format.model_dump(by_alias=True)) if response_format else None
    if grammar is not None and tools:
        # A JSON grammar leaves the model no way to write a tool call.
        raise ServeError(
            400, "response_format cannot be combined with tools (unless tool_choice is none)", param="response_format"
        )
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    sampling = Sampling(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        repeat_penalty=request.repeat_penalty,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=tuple(s for s in stop if s),  # an empty stop string would end every reply at once
        seed=request.seed,
    )
    return ChatTask(
        model=request.model or "",
        messages=freeze(messages),
        images=tuple(images),
        sampling=sampling,
        thinking=thinking_on(request, default_thinking),
        tools=freeze(tools),
        tool_choice=kind,
        tool_name=name,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        grammar=grammar,
        stream=bool(request.stream),
        include_usage=bool(request.stream and request.stream_options and request.stream_options.include_usage),
    )
