"""manifest.json: what a build directory holds (every file with size and sha256), from what, and with what.

The manifest is rewritten after each stage, atomically (a `.part` file, fsync, rename), so a killed
build leaves the last complete record, and the next run resumes from it. Its records and their JSON
are in records.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from gguf import LlamaFileType

from .. import __version__
from ..errors import GGUFError, ManifestError, OutputError
from ..gguf_io import read_gguf_header
from .records import MANIFEST, FileRecord, GGUFInfo, Manifest, ToolVersions, Where
from .source import sha256_file


def load_manifest(out_dir: Path) -> Manifest | None:
    """The directory's manifest, None when it has none; a manifest this toolkit cannot read is an error.

    Raises:
        ManifestError: manifest.json exists but is not a readable build manifest (the message names the field).
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: not a readable build manifest ({err}); use --force to rebuild") from err
    return Manifest.from_json(data, path)


def save_manifest(out_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically and durably, stamped with the time; returns its path.

    Raises:
        OutputError: the directory cannot be written (the old manifest stays).
    """
    path = Path(out_dir) / MANIFEST
    tmp = path.parent / f".{path.name}.{os.getpid()}.part"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(replace(manifest, updated=timestamp()).to_json(), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest as JSON, checked as load_manifest checks it (verify adds its record to this form)."""
    manifest = load_manifest(out_dir)
    return None if manifest is None else manifest.to_json()


def write_manifest(out_dir: Path, data: Mapping[str, Any]) -> Path:
    """save_manifest for the JSON form; a malformed `data` is a ManifestError and nothing is written."""
    return save_manifest(out_dir, Manifest.from_json(data, Path(out_dir) / MANIFEST))


def tool_versions() -> ToolVersions:
    """The toolkit's, gguf-py's, llama-cpp-python's and its bundled libllama's versions."""
    try:
        import llama_cpp

        libllama = llama_cpp.llama_version().decode()
    except (ImportError, AttributeError, OSError):
        libllama = None
    return ToolVersions(__version__, _dist_version("gguf"), _dist_version("llama-cpp-python"), libllama)


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def file_record(path: Path, sha256: str, stage: str) -> FileRecord:
    """size, sha256 and, for a GGUF, its kind, file type and tensor types (from the header alone)."""
    record = FileRecord(path.stat().st_size, sha256, stage)
    if path.suffix != ".gguf":
        return record
    try:
        header = read_gguf_header(path)
    except GGUFError:
        return record
    ftype = header.kvs.get("general.file_type")
    try:
        ftype = LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_") if ftype is not None else None
    except ValueError:
        ftype = str(ftype)  # a type this gguf-py does not know: its number
    counts: dict[str, int] = {}
    for t in header.tensors:
        counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
    info = GGUFInfo(header.kvs.get("general.architecture"), ftype, dict(sorted(counts.items())), len(header.tensors))
    return replace(record, gguf=info)


def matches(
    path: Path, record: FileRecord | Mapping[str, Any] | None, progress: Callable[[int], None] | None = None
) -> bool:
    """The file exists with the recorded size and sha256 (hashed only when the size matches)."""
    if isinstance(record, Mapping):  # verify reads the manifest as JSON (read_manifest)
        record = FileRecord.from_json(record, Where())
    if record is None or not path.is_file() or path.stat().st_size != record.size:
        return False
    return sha256_file(path, progress) == record.sha256


def timestamp() -> str:
    """Local time as the manifest records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
