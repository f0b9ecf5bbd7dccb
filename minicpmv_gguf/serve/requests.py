"""`POST /v1/chat/completions`: the request as pydantic models, and its validation.

parse_chat_request checks the body in two steps: pydantic checks types (strictly: `"0.5"` is not a number,
`"false"` not a boolean) and a wrong type is a 422; then check_request checks what the types cannot say
(roles, content part types, tool-call arguments, tool_choice against tools) and a problem is a 400. Unknown
fields are ignored: clients send many. `task.chat_task` then turns the request into the engine's ChatTask.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ServeError

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url")
IMAGE_ROLES = ("user", "tool")  # the 4.6 template refuses images in system messages


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class ImageURL(_Model):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ContentPart(_Model):
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None  # a bare URL string, as Ollama accepts


class FunctionCall(_Model):
    name: str
    arguments: str | dict[str, Any] = "{}"  # OpenAI clients send a JSON string; Ollama's send an object


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # Ollama's and mlx-vlm's name for reasoning_content


class FunctionDef(_Model):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Model):
    include_usage: bool | None = None


class JSONSchemaSpec(_Model):
    name: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-server's json_object + schema


class TemplateKwargs(_Model):
    enable_thinking: bool | None = None


class ChatRequest(_Model):
    model: str | None = None
    messages: list[Message]
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: TemplateKwargs | None = None
    reasoning_effort: str | None = None


_FIELDS = frozenset(
    name
    for model in (ChatRequest, Message, ContentPart, ImageURL, ToolCall, FunctionCall, Tool, FunctionDef)
    + (NamedToolChoice, NamedFunction, StreamOptions, ResponseFormat, JSONSchemaSpec, TemplateKwargs)
    for field_name, info in model.model_fields.items()
    for name in (field_name, info.alias)
    if name
)


def _where(loc: tuple) -> str:
    """`messages[0].content` for pydantic's ('messages', 0, 'content', 'str'): union member tags dropped."""
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in _FIELDS:
            out += f".{item}" if out else item
        else:
            break
    return out


def parse_chat_request(body: bytes | str | Mapping) -> ChatRequest:
    """The validated request from the raw body (or its parsed JSON).

    Raises:
        ServeError: 400 for a body that is not JSON or a request check_request refuses, 422 for a field
            of the wrong type or out of range.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
            raise ServeError(400, "the request body is not valid JSON") from err
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        where = _where(first["loc"])
        raise ServeError(422, f"{where or 'body'}: {first['msg']}", param=where or None) from err
    check_request(request)
    return request


def tool_arguments(raw: str | dict, where: str) -> dict:
    """Tool-call arguments as the object the template iterates (`arguments|items`)."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise ServeError(400, f"{where} is not valid JSON", param="messages") from err
    if not isinstance(value, dict):
        raise ServeError(400, f"{where} must be a JSON object", param="messages")
    return value


def _check_message(i: int, message: Message) -> None:
    where = f"messages[{i}]"
    if message.role not in ROLES:
        raise ServeError(
            400,
            f"{where}: unsupported role {message.role[:40]!r} (expected one of {', '.join(ROLES)})",
            param="messages",
        )
    if message.content is None and message.role != "assistant":
        raise ServeError(400, f"{where}: a {message.role} message needs content", param="messages")
    if message.tool_calls and message.role != "assistant":
        raise ServeError(400, f"{where}: only assistant messages have tool_calls", param="messages")
    for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
        part_where = f"{where}.content[{j}]"
        if part.type not in PART_TYPES:
            raise ServeError(
                400,
                f"{part_where}: unsupported content part type {part.type[:40]!r} (expected text or image_url)",
                param="messages",
            )
        if part.type == "text" and part.text is None:
            raise ServeError(422, f"{part_where}.text: Field required", param=f"{part_where}.text")
        if part.type == "image_url" and part.image_url is None:
            raise ServeError(422, f"{part_where}.image_url: Field required", param=f"{part_where}.image_url")
        if part.type == "image_url" and message.role not in IMAGE_ROLES:
            raise ServeError(400, f"{part_where}: a {message.role} message cannot contain images", param="messages")
    for j, call in enumerate(message.tool_calls or ()):
        tool_arguments(call.function.arguments, f"{where}.tool_calls[{j}].function.arguments")


def check_request(request: ChatRequest) -> None:
    """What the types cannot say: the chat template's rules, n, and tools against tool_choice.

    Raises:
        ServeError: 400 naming the field at fault.
    """
    if request.n not in (None, 1):
        raise ServeError(400, f"n must be 1 (got {request.n}): one choice per request", param="n")
    if not request.messages:
        raise ServeError(400, "messages must not be empty", param="messages")
    for i, message in enumerate(request.messages):
        _check_message(i, message)
    if any(m.role == "system" for m in request.messages[1:]):
        raise ServeError(400, "a system message must be the first message", param="messages")
    if not any(m.role == "user" for m in request.messages):
        raise ServeError(400, "messages need at least one user message", param="messages")
    names = [tool.function.name for tool in request.tools or ()]
    if len(set(names)) != len(names):
        raise ServeError(400, "tools: two tools have the same name", param="tools")
    choice = request.tool_choice
    if (choice == "required" or isinstance(choice, NamedToolChoice)) and not names:
        raise ServeError(400, "tool_choice needs tools", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ServeError(400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice")
