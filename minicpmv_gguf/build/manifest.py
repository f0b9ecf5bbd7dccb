"""manifest.json: what a build directory holds (every file with size and sha256), from what, and with what.

The manifest is rewritten after each stage, atomically (a `.part` file, fsync, rename), so a killed
build leaves the last complete record, and the next run resumes from it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from gguf import LlamaFileType

from .. import __version__
from ..errors import GGUFError, OutputError
from ..gguf_io import read_gguf_header
from .source import sha256_file

MANIFEST = "manifest.json"
FORMAT = "minicpmv-gguf build"
VERSION = 1


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The directory's manifest, None when it has none; a manifest this toolkit cannot read is an error.

    Raises:
        OutputError: manifest.json exists but is not a readable build manifest.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputError(f"{path}: not a readable build manifest ({err}); use --force to rebuild") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputError(f"{path}: not a minicpmv-gguf build manifest; use --force to build here anyway")
    if data.get("version") != VERSION:
        raise OutputError(
            f"{path}: manifest version {data.get('version')} (this toolkit writes {VERSION}); use --force to rebuild"
        )
    return data


def write_manifest(out_dir: Path, data: dict[str, Any]) -> Path:
    """Write manifest.json atomically and durably; returns its path."""
    path = Path(out_dir) / MANIFEST
    tmp = path.parent / f".{path.name}.{os.getpid()}.part"
    data = {**data, "format": FORMAT, "version": VERSION, "updated": _now()}
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def new_manifest(source: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": _now(),
        "tools": tool_versions(),
        "source": source,
        "options": options,
        "stages": {},
        "files": {},
    }


def tool_versions() -> dict[str, str | None]:
    """The toolkit's, gguf-py's, llama-cpp-python's and its bundled libllama's versions."""
    out: dict[str, str | None] = {"minicpmv_gguf": __version__}
    for dist in ("gguf", "llama-cpp-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import llama_cpp

        out["libllama"] = llama_cpp.llama_version().decode()
    except (ImportError, AttributeError, OSError):
        out["libllama"] = None
    return out


def file_record(path: Path, sha256: str, **extra: Any) -> dict[str, Any]:
    """size, sha256 and, for a GGUF, its kind, file type and tensor types (from the header alone)."""
    record: dict[str, Any] = {"size": path.stat().st_size, "sha256": sha256, **extra}
    if path.suffix == ".gguf":
        try:
            header = read_gguf_header(path)
        except GGUFError:
            return record
        ftype = header.kvs.get("general.file_type")
        try:
            ftype = (
                LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_") if ftype is not None else None
            )
        except ValueError:
            pass
        counts: dict[str, int] = {}
        for t in header.tensors:
            counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
        record.update(
            architecture=header.kvs.get("general.architecture"),
            file_type=ftype,
            tensor_types=dict(sorted(counts.items())),
            n_tensors=len(header.tensors),
        )
    return record


def matches(path: Path, record: dict[str, Any] | None, progress: Callable[[int], None] | None = None) -> bool:
    """The file exists with the recorded size and sha256 (hashed only when the size matches)."""
    if not record or not path.is_file() or path.stat().st_size != record.get("size"):
        return False
    return sha256_file(path, progress) == record.get("sha256")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
