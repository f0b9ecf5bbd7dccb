"""Streamed replies split into content, reasoning and tool calls, and their OpenAI chat-completion shapes.

MiniCPM-V 4.6 (like Qwen3.5) writes tool calls in the Qwen3-Coder XML format, one block per call:

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    ...
    </function>
    </tool_call>

ReplyParser is fed the reply's text as it streams and returns events: Content and Reasoning text as soon as
it cannot be the start of a tag, and per call a ToolCallStart plus a ToolCallArguments (a JSON object as a
string) once the call's `</function>` arrives. A call is reported only when complete, so that a malformed or
unterminated one can still become content (the parser never reports a call it then has to take back).
Parameter values are typed by the tool's JSON schema; string values are kept verbatim.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
FUNCTION_OPEN, FUNCTION_CLOSE = "<function=", "</function>"
PARAM_OPEN, PARAM_CLOSE = "<parameter=", "</parameter>"
THINK_CLOSE = "</think>"
_MAX_NAME = 256  # a longer "name" is taken as text, so a stray `<function=` cannot hold back the reply for ever


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    arguments: str  # a JSON object


Event = Content | Reasoning | ToolCallStart | ToolCallArguments


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parameter_schemas(tools: Iterable[Mapping] | None) -> dict[str, dict[str, Any]]:
    """{function name: {parameter name: its JSON schema}} from OpenAI `tools`."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or ():
        fn = tool.get("function", tool)
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, Mapping) else None
        out[fn.get("name")] = dict(props) if isinstance(props, Mapping) else {}
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return {str: "string", dict: "object", list: "array"}[type(value)]


def schema_types(schema: Any) -> set[str]:
    """The JSON types a schema allows: `type` (a name or a list), anyOf/oneOf members, or enum/const values."""
    if not isinstance(schema, Mapping):
        return set()
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared) if isinstance(declared, list) else set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            types |= schema_types(sub)
    if not types:
        types |= {"object"} if "properties" in schema else set()
        types |= {"array"} if "items" in schema else set()
        values = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else []
        types |= {_json_type(v) for v in values if isinstance(v, (str, int, float, bool, dict, list, type(None)))}
    return types


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def typed_value(raw: str, schema: Any) -> Any:
    """A parameter's value as its schema types it; the raw text when it is a string or does not parse.

    Without a schema (an unknown function or parameter) the value is a string, as the format writes it.
    """
    types = schema_types(schema)
    if not types or types == {"string"}:
        return raw
    text = raw.strip()
    # The chat template renders booleans and null of earlier calls with Python's str(): True, False, None.
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text in ("null", "None"):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return raw
    if "string" in types and (isinstance(value, str) or _json_type(value) not in types):
        return raw  # string values are verbatim: quotes the model wrote are part of them
    return value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _held(text: str, markers: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that could be the start of one of the markers."""
    for n in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in markers):
            return n
    return 0


def _name_at(text: str, start: int) -> tuple[str | None, int]:
    """(name, end) for `NAME>` at start; (None, -1) while incomplete; ("", -1) if it cannot be a name."""
    end = text.find(">", start)
    if end < 0:
        tail = text[start:]
        return ("", -1) if "\n" in tail or len(tail) > _MAX_NAME else (None, -1)
    name = text[start:end]
    return (name, end + 1) if name and "\n" not in name and len(name) <= _MAX_NAME else ("", -1)


def _strip_one_newline(value: str) -> str:
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


class ReplyParser:
    """Incremental parser of a MiniCPM-V 4.6 reply: `feed(piece) -> events`, then `finish() -> events`.

    Args:
        tools: the request's OpenAI `tools`, used to type parameter values.
        thinking: the prompt ended inside `<think>` (thinking on): text up to `</think>` is Reasoning.
        parse_tool_calls: off, `<tool_call>` blocks stay content (a request without tools).
        new_id: makes each call's id.
    """

    def __init__(
        self,
        tools: Iterable[Mapping] | None = None,
        *,
        thinking: bool = False,
        parse_tool_calls: bool = True,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._schemas = parameter_schemas(tools)
        self._calls, self._new_id = parse_tool_calls, new_id
        self._state = "reasoning" if thinking else "text"
        self._buf = ""
        self._skip_nl = thinking  # newlines that open the reasoning or follow `</think>` are layout, not text
        self._after_call = False  # whitespace between and after calls is layout too
        self._index = 0
        self._reset_call()

    def _reset_call(self) -> None:
        self._pos, self._name, self._param, self._scan = 0, None, None, 0
        self._params: dict[str, Any] = {}

    def feed(self, piece: str) -> list[Event]:
        self._buf += piece
        out: list[Event] = []
        while getattr(self, f"_step_{self._state}")(out):
            pass
        return out

    def finish(self) -> list[Event]:
        """The events for the held-back end of the reply; an unterminated call becomes content."""
        out: list[Event] = []
        buf, self._buf = self._buf, ""
        if self._state == "reasoning" and buf:
            out.append(Reasoning(buf))
        elif self._state == "call" or (self._state == "text" and buf and not (self._after_call and buf.isspace())):
            out.append(Content(buf))
        self._state = "text"
        self._reset_call()
        return out

    def _drop_newlines(self) -> bool:
        """Drops the leading newlines `_skip_nl` asks for; False while only newlines have arrived."""
        if self._skip_nl:
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return False
            self._skip_nl = False
        return True

    def _step_reasoning(self, out: list[Event]) -> bool:
        if not self._drop_newlines():
            return False
        markers = ("\n" + THINK_CLOSE, THINK_CLOSE) + ((TOOL_CALL_OPEN,) if self._calls else ())
        hits = [(i, m) for m in markers if (i := self._buf.find(m)) >= 0]
        if not hits:
            keep = _held(self._buf, markers)
            self._emit(out, Reasoning, len(self._buf) - keep)
            return False
        i, marker = min(hits)
        self._emit(out, Reasoning, i)
        # A call may open without `</think>` (llama.cpp's parser allows it too): the call ends the reasoning.
        self._buf = self._buf if marker == TOOL_CALL_OPEN else self._buf[len(marker) :]
        self._skip_nl = marker != TOOL_CALL_OPEN
        self._state = "text"
        return True

    def _step_text(self, out: list[Event]) -> bool:
        if not self._drop_newlines():
            return False
        if not self._calls:
            self._emit(out, Content, len(self._buf))
            return False
        start = self._buf.find(TOOL_CALL_OPEN)
        if self._after_call:
            gap = _skip_ws(self._buf, 0)
            if start == gap:
                self._buf = self._buf[gap:]
                start = 0
            elif TOOL_CALL_OPEN.startswith(self._buf[gap:]):
                return False
            self._after_call = False
        if start < 0:
            self._emit(out, Content, len(self._buf) - _held(self._buf, (TOOL_CALL_OPEN,)))
            return False
        self._emit(out, Content, start)
        self._state, self._pos = "call", len(TOOL_CALL_OPEN)
        return True

    def _emit(self, out: list[Event], kind: type, n: int) -> None:
        if n > 0:
            out.append(kind(self._buf[:n]))
            self._buf = self._buf[n:]

    def _step_after_function(self, out: list[Event]) -> bool:
        i = _skip_ws(self._buf, 0)
        rest = self._buf[i:]
        if rest.startswith(TOOL_CALL_CLOSE):
            self._buf = rest[len(TOOL_CALL_CLOSE) :]
        elif TOOL_CALL_CLOSE.startswith(rest):
            return False
        self._state = "text"  # text after a `</function>` without `</tool_call>` is content
        return True

    def _step_call(self, out: list[Event]) -> bool:
        """Parses the call in `_buf` from `_pos`; True once it is complete or known to be malformed."""
        text = self._buf
        while True:
            if self._param is not None:
                key, start = self._param
                end = text.find(PARAM_CLOSE, max(start, self._scan))
                if end < 0:
                    self._scan = max(start, len(text) - len(PARAM_CLOSE) + 1)
                    return False
                schema = self._schemas.get(self._name, {}).get(key)
                self._params[key] = typed_value(_strip_one_newline(text[start:end]), schema)
                self._param, self._pos = None, end + len(PARAM_CLOSE)
                continue
            i = _skip_ws(text, self._pos)
            rest = text[i:]
            expected = (FUNCTION_OPEN,) if self._name is None else (PARAM_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE)
            opener = next((t for t in expected if rest.startswith(t)), None)
            if opener is None:
                return self._malformed(out, i) if not any(t.startswith(rest) for t in expected) else False
            if opener in (FUNCTION_CLOSE, TOOL_CALL_CLOSE):
                return self._complete(out, i + len(opener), opener == TOOL_CALL_CLOSE)
            name, end = _name_at(text, i + len(opener))
            if name is None:
                return False
            if not name:
                return self._malformed(out, i)
            if opener == FUNCTION_OPEN:
                self._name = name
            else:
                self._param = (name, end)
            self._pos = end

    def _complete(self, out: list[Event], end: int, closed: bool) -> bool:
        arguments = json.dumps(self._params, ensure_ascii=False)
        out += [ToolCallStart(self._index, self._new_id(), self._name), ToolCallArguments(self._index, arguments)]
        self._index += 1
        self._buf = self._buf[end:]
        self._state = "text" if closed else "after_function"
        self._after_call = True
        self._reset_call()
        return True

    def _malformed(self, out: list[Event], at: int) -> bool:
        """Not a call after all: its text up to `at` is content, and the rest is read as text again."""
        self._emit(out, Content, at)
        self._state = "text"
        self._reset_call()
        return True


def merge_text(events: Iterable[Event]) -> list[Event]:
    """Events with adjacent Content (and adjacent Reasoning) joined: the same reply however it was split."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, (Content, Reasoning)) and out and type(out[-1]) is type(ev):
            out[-1] = type(ev)(out[-1].text + ev.text)
        else:
            out.append(ev)
    return out


def stream_deltas(events: Iterable[Event]) -> list[dict]:
    """OpenAI `choices[0].delta` objects for the events; a call's first delta has its id, type and name."""
    out: list[dict] = []
    for ev in merge_text(events):
        if isinstance(ev, Content):
            out.append({"content": ev.text})
        elif isinstance(ev, Reasoning):
            out.append({"reasoning_content": ev.text})
        elif isinstance(ev, ToolCallStart):
            call = {"index": ev.index, "id": ev.id, "type": "function", "function": {"name": ev.name, "arguments": ""}}
            out.append({"tool_calls": [call]})
        else:
            out.append({"tool_calls": [{"index": ev.index, "function": {"arguments": ev.arguments}}]})
    return out


def message_tool_calls(events: Iterable[Event]) -> list[dict]:
    """The non-streamed `message.tool_calls` list, in call order."""
    calls: dict[int, dict] = {}
    for ev in events:
        if isinstance(ev, ToolCallStart):
            calls[ev.index] = {"id": ev.id, "type": "function", "function": {"name": ev.name, "arguments": "{}"}}
        elif isinstance(ev, ToolCallArguments):
            calls[ev.index]["function"]["arguments"] = ev.arguments
    return [calls[i] for i in sorted(calls)]


def reply_message(events: Iterable[Event]) -> dict:
    """The non-streamed assistant `message`: content (None when only calls were made), reasoning, tool calls."""
    events = list(events)
    content = "".join(ev.text for ev in events if isinstance(ev, Content))
    reasoning = "".join(ev.text for ev in events if isinstance(ev, Reasoning))
    calls = message_tool_calls(events)
    message: dict[str, Any] = {"role": "assistant", "content": (content.strip() or None) if calls else content}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


def finish_reason(events: Iterable[Event], stopped: str) -> str:
    """ "tool_calls" when a call was made and generation stopped by itself ("stop"); else `stopped`."""
    made_call = any(isinstance(ev, ToolCallStart) for ev in events)
    return "tool_calls" if made_call and stopped == "stop" else stopped


def forced_prefix(tool_choice: str, tool_name: str | None = None) -> str:
    """Text to append to the prompt (and feed to the parser first) so that the reply starts with a call.

    `tool_choice` is "auto", "none", "required" or "function" (then `tool_name` names the function).
    """
    if tool_choice == "required":
        return TOOL_CALL_OPEN + "\n"
    if tool_choice == "function":
        return f"{TOOL_CALL_OPEN}\n{FUNCTION_OPEN}{tool_name}>\n"
    return ""
