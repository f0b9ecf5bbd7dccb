"""Check a Modelfile the way `ollama create` reads it, without Ollama.

parse_modelfile() redoes Ollama's parser rune for rune; check_modelfile() adds what `ollama create`
checks next: PARAMETER names and value types, REQUIRES, and each FROM file, filed as model, projector
or adapter by its GGUF header as Ollama files it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GGUFError, OllamaError
from ..gguf_io import check_gguf_complete
from ..runtime.headers import gguf_problems
from ..runtime.tensors import summary

INSTRUCTIONS = (
    "from",
    "adapter",
    "draft",
    "license",
    "message",
    "parameter",
    "parser",
    "renderer",
    "requires",
    "system",
    "template",
)
MESSAGE_ROLES = ("system", "user", "assistant")
_INT = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "draft_num_predict",
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
)
_FLOAT = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
# api.Options' JSON names -> the Go type Ollama parses the value as (strconv, strictly).
PARAMETER_TYPES = {
    **dict.fromkeys(_INT, "int"),
    **dict.fromkeys(_FLOAT, "float"),
    "use_mmap": "bool",
    "stop": "string list",
}
# Ollama prints a warning for these and ignores them.
DEPRECATED_PARAMETERS = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
PROJECTOR_TYPES = ("projector", "mmproj")  # general.type values Ollama stores as a projector layer

_GO_BOOLS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")  # strconv.ParseBool

_NIL, _NAME, _VALUE, _PARAMETER, _ROLE, _COMMENT = range(6)
_SPACE, _NEWLINE = " \t", "\r\n"


@dataclass(frozen=True)
class Command:
    """One instruction as Ollama's parser yields it; `key` is the PARAMETER name or the MESSAGE role."""

    instruction: str
    value: str
    line: int
    key: str = ""


@dataclass(frozen=True)
class Problem:
    """One thing `ollama create` would refuse (or, with warning=True, only complain about)."""

    line: int | None
    message: str
    warning: bool = False

    def format(self, path: Path) -> str:
        where = f"{path}:{self.line}" if self.line else str(path)
        return f"{where}: {'warning: ' if self.warning else ''}{self.message}"


@dataclass(frozen=True)
class GGUFKind:
    """How Ollama files a GGUF: "model", "projector" or "adapter"; `kvs` holds its non-array metadata."""

    path: Path
    kind: str
    architecture: str
    kvs: dict[str, Any]


class ModelfileSyntaxError(OllamaError):
    """Ollama's parser stops here: the Modelfile does not parse."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.detail = line, message


def parse_modelfile(text: str) -> list[Command]:
    """The commands of a Modelfile, or ModelfileSyntaxError where Ollama's parser would fail.

    Example:
        >>> parse_modelfile('FROM ./lm.gguf\\nPARAMETER stop "<|im_end|>"\\n')[1]
        Command(instruction='parameter', value='<|im_end|>', line=2, key='stop')
    """
    parser = _Parser()
    for ch in text.removeprefix("\ufeff"):
        parser.feed(ch)
    return parser.finish()


class _Parser:
    """Ollama's state machine: a value ends at a newline only once it unquotes, so quotes may span lines."""

    def __init__(self) -> None:
        self.state, self.buf, self.commands = _NIL, [], []
        self.line = self.start = 1
        self.instruction = self.key = ""

    def feed(self, ch: str) -> None:
        self._feed(ch)
        self.line += ch in _NEWLINE

    def _feed(self, ch: str) -> None:
        nxt, kept = self._step(ch)
        if nxt != self.state:
            if self.state == _VALUE and not self._end_value(ch):
                self.buf.append(ch)  # inside quotes, or a space inside a bare value: kept, even a newline
                return
            self._leave(nxt)
        if kept is not None and kept.isprintable():  # Go's strconv.IsPrint: control characters are dropped
            self.buf.append(kept)

    def _leave(self, nxt: int) -> None:
        """Close the word just read (instruction, PARAMETER name, MESSAGE role) and go to `nxt`."""
        word = "".join(self.buf)
        if self.state == _NAME:
            self.instruction = word.lower()
            if self.instruction not in INSTRUCTIONS:
                raise self._error(_unknown_instruction(word))
            nxt = {"parameter": _PARAMETER, "message": _ROLE}.get(self.instruction, _VALUE)
        elif self.state in (_PARAMETER, _ROLE):
            self.key = word
            if self.state == _ROLE and word not in MESSAGE_ROLES:
                raise self._error(f"MESSAGE role {word!r} must be one of {', '.join(MESSAGE_ROLES)}")
        self.buf.clear()
        self.state = nxt

    def _step(self, ch: str) -> tuple[int, str | None]:
        """Next state and the character to keep, or the parser's error for this character."""
        state = self.state
        if state == _NIL:
            if ch == "#" or ch in _SPACE or ch in _NEWLINE:
                return (_COMMENT if ch == "#" else _NIL), None
            self.start = self.line
            return _NAME, ch
        if state == _COMMENT:
            return (_NIL if ch in _NEWLINE else _COMMENT), None
        if state == _VALUE:
            return (_NIL if ch in _SPACE or ch in _NEWLINE else _VALUE), ch
        if ch in _SPACE:
            return _VALUE, None
        if ch.isascii() and (ch.isalpha() or state == _PARAMETER and (ch.isdigit() or ch == "_")):
            return state, ch
        raise self._error(_bad_word(state, "".join(self.buf), ch))

    def _end_value(self, ch: str) -> bool:
        """Close the value at this newline if it unquotes; False if it must go on (open quote, or a space)."""
        ok, value = _unquote("".join(self.buf).strip())
        if not ok or ch in _SPACE:
            return False
        self.commands.append(Command(self.instruction, value, self.start, self.key))
        self.key = ""
        return True

    def finish(self) -> list[Command]:
        raw = "".join(self.buf).strip()
        if self.state == _VALUE and not _unquote(raw)[0]:
            quote = '"""' if raw.startswith('"""') else '"'
            raise ModelfileSyntaxError(
                self.start,
                f"{self.instruction.upper()} value opened with {quote} is never closed (Ollama: unexpected EOF)",
            )
        if self.state == _VALUE:
            self.commands.append(Command(self.instruction, _unquote(raw)[1], self.start, self.key))
        elif self.state not in (_NIL, _COMMENT):
            raise ModelfileSyntaxError(self.start, "the file ends inside an instruction (Ollama: unexpected EOF)")
        if not any(c.instruction == "from" for c in self.commands):
            raise ModelfileSyntaxError(1, "no FROM line: a Modelfile needs FROM with the model GGUF")
        return self.commands

    def _error(self, message: str) -> ModelfileSyntaxError:
        return ModelfileSyntaxError(self.line, message)


def _unknown_instruction(word: str) -> str:
    return f"unknown instruction {word!r}: Ollama accepts {', '.join(i.upper() for i in INSTRUCTIONS)}"


def _bad_word(state: int, word: str, ch: str) -> str:
    """What is wrong when an instruction, PARAMETER name or MESSAGE role meets `ch`."""
    if state == _NAME and (ch not in _NEWLINE or word.lower() not in INSTRUCTIONS):
        return _unknown_instruction(word + ch.strip())
    what = {_NAME: word.upper(), _PARAMETER: f"PARAMETER {word}", _ROLE: f"MESSAGE {word}"}[state].strip()
    if ch in _NEWLINE:
        return f"{what} needs a value on the same line"
    allowed = "ASCII letters, digits and _" if state == _PARAMETER else "ASCII letters"
    return f"{what}{ch}: a {'PARAMETER name' if state == _PARAMETER else 'MESSAGE role'} is {allowed} only"


def _unquote(s: str) -> tuple[bool, str]:
    """Ollama's unquote: \"\"\"...\"\"\" or "..." around the whole value, else the value as is."""
    if s.startswith('"""'):
        return (True, s[3:-3]) if len(s) >= 6 and s.endswith('"""') else (False, "")
    if s.startswith('"'):
        return (True, s[1:-1]) if len(s) >= 2 and s.endswith('"') else (False, "")
    return True, s


def check_modelfile(path: Path) -> list[Problem]:
    """Every problem `ollama create -f PATH` would hit, one per Problem; none: Ollama accepts it."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return [Problem(None, f"cannot read: {err.strerror or err}")]
    try:
        commands = parse_modelfile(text)
    except ModelfileSyntaxError as err:
        return [Problem(err.line, err.detail)]
    problems = [p for c in commands for p in _check_value(c)]
    return problems + _check_files(commands, path.parent)


def _check_value(c: Command) -> list[Problem]:
    if c.instruction == "parameter":
        return _check_parameter(c)
    if c.instruction == "requires" and not _is_semver(c.value if c.value.startswith("v") else "v" + c.value):
        return [Problem(c.line, f"REQUIRES {c.value!r} is not a version like 0.30.0")]
    return []


def _check_parameter(c: Command) -> list[Problem]:
    if c.key in DEPRECATED_PARAMETERS:
        return [Problem(c.line, f"PARAMETER {c.key} is deprecated; Ollama ignores it", warning=True)]
    kind = PARAMETER_TYPES.get(c.key)
    if kind is None:
        return [Problem(c.line, f"unknown parameter '{c.key}'")]
    if not _PARSES[kind](c.value):
        return [Problem(c.line, f"PARAMETER {c.key} {c.value!r}: invalid {kind} value")]
    if c.key == "stop" and c.value.startswith("["):
        # Not an error to Ollama, but the whole bracket becomes one stop string that never matches.
        return [
            Problem(
                c.line, "PARAMETER stop takes one string per line; this bracket is one literal string", warning=True
            )
        ]
    return []


def _is_go_int(s: str) -> bool:
    """strconv.ParseInt(s, 10, 64)."""
    return re.fullmatch(r"[+-]?[0-9]+", s) is not None and -(2**63) <= int(s) < 2**63


def _is_go_float32(s: str) -> bool:
    """strconv.ParseFloat(s, 32): decimal or hex floats, inf/nan, and the value must fit a float32."""
    if re.fullmatch(r"[+-]?(inf|infinity|nan)", s, re.I):
        return True
    if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", s):
        value = float(s)
    elif re.fullmatch(r"[+-]?0[xX]([0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?[0-9]+", s):
        value = float.fromhex(s.replace("_", ""))
    else:
        return False
    try:
        struct.pack("<f", value)  # OverflowError past float32's range, as ParseFloat's ErrRange
    except OverflowError:
        return False
    return True


_PARSES = {"int": _is_go_int, "float": _is_go_float32, "bool": _GO_BOOLS.__contains__, "string list": lambda _: True}


def _is_semver(v: str) -> bool:
    """golang.org/x/mod/semver.IsValid: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]], no leading zeros."""
    num, ident = r"(0|[1-9][0-9]*)", r"[0-9A-Za-z-]+"
    m = re.fullmatch(rf"v{num}(\.{num}(\.{num}(-(?P<pre>{ident}(\.{ident})*))?(\+{ident}(\.{ident})*)?)?)?", v)
    prerelease = (m and m.group("pre") or "").split(".")
    return bool(m) and not any(p.isdigit() and len(p) > 1 and p[0] == "0" for p in prerelease)


def _check_files(commands: list[Command], base: Path) -> list[Problem]:
    problems: list[Problem] = []
    found: list[tuple[int, GGUFKind]] = []
    for c in commands:
        if c.instruction not in ("from", "adapter", "draft"):
            continue
        # As Ollama expands it: ~ is a home folder, a relative path starts at the Modelfile's folder.
        path = Path(c.value).expanduser() if c.value.startswith("~") else base / c.value
        if not path.exists():
            pull = " (Ollama would try to pull a model of that name)" if c.instruction == "from" else ""
            problems.append(Problem(c.line, f"{c.instruction.upper()} {c.value}: no such file{pull}"))
        elif c.instruction == "from":
            problems += _classify_from(c, path, found)
    return problems or _check_layers(found)  # with a FROM file unreadable, its layer is unknown


def _classify_from(c: Command, path: Path, found: list[tuple[int, GGUFKind]]) -> list[Problem]:
    files = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    if not files:
        return [Problem(c.line, f"FROM {c.value}: the folder holds no .gguf file")]
    problems = []
    for file in files:
        try:
            found.append((c.line, classify_gguf(file)))
        except GGUFError as err:
            problems.append(Problem(c.line, f"FROM {c.value}: {err}"))
            continue
        # The runtime's own checks: a file libmtmd or llama.cpp would crash on crashes Ollama's runner too.
        if bad := gguf_problems(file):
            problems.append(Problem(c.line, f"FROM {c.value}: {file.name}: {summary(bad)}"))
    return problems


def _check_layers(found: list[tuple[int, GGUFKind]]) -> list[Problem]:
    """One model, at most one projector: Ollama passes only the first projector to llama-server."""
    models, projectors = ([(line, g) for line, g in found if g.kind == kind] for kind in ("model", "projector"))
    problems = [
        Problem(line, f"{g.path.name} is a LoRA adapter (general.type adapter): use ADAPTER, not FROM")
        for line, g in found
        if g.kind == "adapter"
    ]
    if len(models) > 1:
        names = ", ".join(f"{g.path.name} ({g.architecture})" for _, g in models)
        problems.append(
            Problem(
                models[1][0],
                f"{len(models)} model GGUFs in FROM ({names}): Ollama imports one "
                "model; the other FROM files must be projectors",
            )
        )
    if len(projectors) > 1:
        names = ", ".join(g.path.name for _, g in projectors)
        problems.append(
            Problem(
                projectors[1][0],
                f"{len(projectors)} projector GGUFs in FROM ({names}): llama-server takes one --mmproj",
            )
        )
    if projectors and not models:
        problems.append(
            Problem(
                projectors[0][0],
                f"{projectors[0][1].path.name} is a projector but no FROM names "
                "a model GGUF: add FROM with the language-model GGUF",
            )
        )
    return problems


def classify_gguf(path: Path) -> GGUFKind:
    """Model, projector or adapter, by the header keys Ollama reads (general.type, block counts).

    Raises:
        GGUFError: not a readable GGUF file.
    """
    kvs = check_gguf_complete(path).kvs  # a truncated GGUF would fail only at `ollama create`
    arch, gtype = str(kvs.get("general.architecture", "")), kvs.get("general.type")
    no_blocks = kvs.get(f"{arch}.block_count", 0) == 0
    encoder = (
        kvs.get(f"{arch}.vision.block_count", 0) > 0
        or arch == "clip"
        and (kvs.get("clip.has_vision_encoder") or kvs.get("clip.has_audio_encoder"))
    )
    projector = gtype in PROJECTOR_TYPES or no_blocks and encoder
    return GGUFKind(path, "adapter" if gtype == "adapter" else "projector" if projector else "model", arch, kvs)
