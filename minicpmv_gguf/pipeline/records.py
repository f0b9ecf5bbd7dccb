"""manifest.json's records as frozen dataclasses, and the one place they are read from and written to JSON.

The layout is the one minicpmv-gguf 0.1.0 wrote (format "minicpmv-gguf build", version 1), so the build
directories it made resume. Reading checks the type of every field; a malformed manifest is one
ManifestError that names the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ManifestError

MANIFEST = "manifest.json"
FORMAT = "minicpmv-gguf build"
VERSION = 1


@dataclass(frozen=True)
class Where:
    """The field being read, for error messages: `out/manifest.json: files["lm.gguf"].size: ...`."""

    file: Path = Path(MANIFEST)
    field: str = ""

    def key(self, name: str) -> Where:
        return Where(self.file, f"{self.field}.{name}" if self.field else name)

    def item(self, name: str) -> Where:
        return Where(self.file, f"{self.field}[{json.dumps(name)}]")

    def error(self, problem: str) -> ManifestError:
        return ManifestError(f"{self.file}: {self.field or 'the top level'}: {problem}; use --force to rebuild")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a size


_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": _is_int,
    "a number": lambda v: _is_int(v) or isinstance(v, float),
    "a string or an integer": lambda v: isinstance(v, str) or _is_int(v),
    "true or false": lambda v: isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of objects": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}


def _check(value: Any, kind: str, at: Where) -> Any:
    if not _KINDS[kind](value):
        shown = json.dumps(value)
        raise at.error(f"expected {kind}, got {shown if len(shown) <= 40 else shown[:37] + '...'}")
    return value


def _get(obj: Mapping[str, Any], name: str, at: Where, kind: str, *, optional: bool = False) -> Any:
    """obj[name], checked to be `kind` (a key of _KINDS); None if optional and absent or null."""
    value = obj.get(name)
    if value is None and optional:
        return None
    if value is None:
        raise at.key(name).error("missing" if name not in obj else "is null")
    return _check(value, kind, at.key(name))


def _mapping(obj: Mapping[str, Any], name: str, at: Where, kind: str) -> dict[str, Any]:
    """obj[name]: an object whose values are all `kind`."""
    at_map = at.key(name)
    return {k: _check(v, kind, at_map.item(k)) for k, v in _get(obj, name, at, "an object").items()}


def _records(obj: Mapping[str, Any], name: str, at: Where, read: Callable[[Any, Where], Any]) -> dict[str, Any]:
    """obj[name]: an object of records, each read by `read`."""
    at_map = at.key(name)
    return {k: read(v, at_map.item(k)) for k, v in _get(obj, name, at, "an object").items()}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)  # 0.1.0 wrote an unknown GGUF file type as its number


def _object(data: Any, at: Where) -> Mapping[str, Any]:
    if data is None:
        raise at.error("missing")
    return _check(data, "an object", at)


@dataclass(frozen=True)
class ToolVersions:
    """The toolkit's, gguf-py's, llama-cpp-python's and its bundled libllama's versions (None: not installed)."""

    minicpmv_gguf: str | None
    gguf: str | None
    llama_cpp_python: str | None
    libllama: str | None

    def to_json(self) -> dict[str, str | None]:
        return {_TOOL_KEYS.get(k, k): v for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, data: Any, at: Where) -> ToolVersions:
        obj = _object(data, at)
        return cls(**{k: _get(obj, _TOOL_KEYS.get(k, k), at, "a string", optional=True) for k in _TOOL_FIELDS})


_TOOL_KEYS = {"llama_cpp_python": "llama-cpp-python"}  # field -> JSON key, where they differ
_TOOL_FIELDS = tuple(f.name for f in fields(ToolVersions))


@dataclass(frozen=True)
class SourceFile:
    """One checkpoint file as fingerprinted; its sha256 is reused while size and mtime stay the same."""

    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any, at: Where) -> SourceFile:
        obj = _object(data, at)
        return cls(
            _get(obj, "size", at, "an integer"),
            _get(obj, "mtime_ns", at, "an integer"),
            _get(obj, "sha256", at, "a string"),
        )


@dataclass(frozen=True)
class SourceRecord:
    """The checkpoint a build was made from: where it is, where it came from, and its content fingerprint."""

    kind: str  # "local" or "hub"
    path: str
    repo_id: str | None
    revision: str | None
    describe: str
    fingerprint: str
    files: Mapping[str, SourceFile]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "describe": self.describe,
            "fingerprint": self.fingerprint,
            "files": {name: f.to_json() for name, f in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: Any, at: Where) -> SourceRecord:
        obj = _object(data, at)
        return cls(
            kind=_get(obj, "kind", at, "a string"),
            path=_get(obj, "path", at, "a string"),
            repo_id=_get(obj, "repo_id", at, "a string", optional=True),
            revision=_get(obj, "revision", at, "a string", optional=True),
            describe=_get(obj, "describe", at, "a string"),
            fingerprint=_get(obj, "fingerprint", at, "a string"),
            files=_records(obj, "files", at, SourceFile.from_json),
        )


@dataclass(frozen=True)
class BuildOptions:
    """What `build` was asked for (see build() for each option)."""

    quant: str
    modes: tuple[str, ...]
    lm_outtype: str
    mmproj_outtype: str
    keep_unquantized: bool
    ollama: bool
    ollama_name: str
    # LoRA adapters merged in (lora.Adapter.record(): path, sha256, rank, alpha, rslora, scale, targets).
    loras: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {**vars(self), "modes": list(self.modes), "loras": [dict(r) for r in self.loras]}
        return out if self.loras else {k: v for k, v in out.items() if k != "loras"}  # 0.1.0's layout without

    @classmethod
    def from_json(cls, data: Any, at: Where) -> BuildOptions:
        obj = _object(data, at)
        return cls(
            quant=_get(obj, "quant", at, "a string"),
            modes=tuple(_get(obj, "modes", at, "a list of strings")),
            lm_outtype=_get(obj, "lm_outtype", at, "a string"),
            mmproj_outtype=_get(obj, "mmproj_outtype", at, "a string"),
            keep_unquantized=_get(obj, "keep_unquantized", at, "true or false"),
            ollama=_get(obj, "ollama", at, "true or false"),
            ollama_name=_get(obj, "ollama_name", at, "a string"),
            loras=tuple(_get(obj, "loras", at, "a list of objects", optional=True) or ()),
        )


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF's header says: its architecture, file type and tensor count per ggml type."""

    architecture: str | None
    file_type: str | None
    tensor_types: Mapping[str, int]
    n_tensors: int

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "tensor_types": dict(self.tensor_types)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], at: Where) -> GGUFInfo:
        return cls(
            architecture=_get(obj, "architecture", at, "a string", optional=True),
            file_type=_str(_get(obj, "file_type", at, "a string or an integer", optional=True)),
            tensor_types=_mapping(obj, "tensor_types", at, "an integer"),
            n_tensors=_get(obj, "n_tensors", at, "an integer"),
        )


@dataclass(frozen=True)
class FileRecord:
    """One file of the build directory: size, sha256, the stage that wrote it, and what it is."""

    size: int
    sha256: str
    stage: str
    gguf: GGUFInfo | None = None  # None: not a GGUF, or one whose header could not be read
    link_to: str | None = None  # the Ollama package's hard link to this build's file of that name

    def to_json(self) -> dict[str, Any]:
        # GGUF fields flat beside the others, as 0.1.0 wrote them; link_to last
        out: dict[str, Any] = {"size": self.size, "sha256": self.sha256, "stage": self.stage}
        out.update(self.gguf.to_json() if self.gguf else {})
        return {**out, "link_to": self.link_to} if self.link_to is not None else out

    @classmethod
    def from_json(cls, data: Any, at: Where) -> FileRecord:
        obj = _object(data, at)
        return cls(
            size=_get(obj, "size", at, "an integer"),
            sha256=_get(obj, "sha256", at, "a string"),
            stage=_get(obj, "stage", at, "a string"),
            gguf=GGUFInfo.from_json(obj, at) if "n_tensors" in obj else None,
            link_to=_get(obj, "link_to", at, "a string", optional=True),
        )


@dataclass(frozen=True)
class StageRecord:
    """One finished stage: what its outputs depend on, the outputs, and how long it took."""

    params: Mapping[str, Any]  # options, source fingerprint, tool versions: JSON, compared as a whole
    outputs: tuple[str, ...]
    seconds: float | None = None  # None in the record written before the stage's end was timed

    def to_json(self) -> dict[str, Any]:
        out = {"params": self.params, "outputs": list(self.outputs)}
        return {**out, "seconds": self.seconds} if self.seconds is not None else out

    @classmethod
    def from_json(cls, data: Any, at: Where) -> StageRecord:
        obj = _object(data, at)
        return cls(
            params=_get(obj, "params", at, "an object"),
            outputs=tuple(_get(obj, "outputs", at, "a list of strings")),
            seconds=_get(obj, "seconds", at, "a number", optional=True),
        )


@dataclass(frozen=True)
class VerifyRecord:
    """What `verify` recorded: the sha256 of each file it checked, and its summary (verify's own JSON)."""

    files: Mapping[str, str]
    summary: Mapping[str, Any]

    def describes(self, files: Mapping[str, FileRecord]) -> bool:
        """Every file verify checked is still in the build with the same sha256."""
        return all(name in files and files[name].sha256 == sha for name, sha in self.files.items())

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "files": dict(self.files)}

    @classmethod
    def from_json(cls, data: Any, at: Where) -> VerifyRecord:
        obj = _object(data, at)
        return cls(_mapping(obj, "files", at, "a string"), {k: v for k, v in obj.items() if k != "files"})


@dataclass(frozen=True)
class Manifest:
    """A build directory's manifest.json: its source, tools and options, each stage, and every file."""

    created: str
    tools: ToolVersions
    source: SourceRecord
    options: BuildOptions
    stages: Mapping[str, StageRecord]  # in the order they ran
    files: Mapping[str, FileRecord]  # by path relative to the build directory
    updated: str = ""  # stamped when the manifest is written
    verify: VerifyRecord | None = None  # kept only while it describes these very files

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "tools": self.tools.to_json(),
            "source": self.source.to_json(),
            "options": self.options.to_json(),
            "stages": {key: s.to_json() for key, s in self.stages.items()},
            "files": {name: f.to_json() for name, f in self.files.items()},
            "updated": self.updated,
        }
        return {**out, "verify": self.verify.to_json()} if self.verify is not None else out

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Manifest:
        """The manifest in `data` (parsed JSON of the file `path`, named in errors).

        Raises:
            ManifestError: not a build manifest, another version, or a field missing or of the wrong type.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{path}: not a minicpmv-gguf build manifest; use --force to build here anyway")
        if data.get("version") != VERSION:
            raise ManifestError(
                f"{path}: manifest version {data.get('version')} (this toolkit writes {VERSION}); "
                "use --force to rebuild"
            )
        at = Where(path)
        return cls(
            created=_get(data, "created", at, "a string"),
            tools=ToolVersions.from_json(data.get("tools"), at.key("tools")),
            source=SourceRecord.from_json(data.get("source"), at.key("source")),
            options=BuildOptions.from_json(data.get("options"), at.key("options")),
            stages=_records(data, "stages", at, StageRecord.from_json),
            files=_records(data, "files", at, FileRecord.from_json),
            updated=_get(data, "updated", at, "a string"),
            verify=VerifyRecord.from_json(data["verify"], at.key("verify")) if data.get("verify") is not None else None,
        )
