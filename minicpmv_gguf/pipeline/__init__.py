"""One command from a checkpoint to the GGUFs, an Ollama package and a manifest: `build`, resumable and locked."""

from .manifest import load_manifest, read_manifest, save_manifest, write_manifest
from .progress import StageEvent, StageProgress
from .records import (
    MANIFEST,
    BuildOptions,
    FileRecord,
    GGUFInfo,
    Manifest,
    SourceFile,
    SourceRecord,
    StageRecord,
    ToolVersions,
    VerifyRecord,
)
from .result import BuildResult, StageReport
from .source import Source, fingerprint, resolve_source, sha256_file
from .stages import build
from .workdir import BuildLock

__all__ = [
    "MANIFEST",
    "BuildLock",
    "BuildOptions",
    "BuildResult",
    "FileRecord",
    "GGUFInfo",
    "Manifest",
    "Source",
    "SourceFile",
    "SourceRecord",
    "StageEvent",
    "StageProgress",
    "StageRecord",
    "StageReport",
    "ToolVersions",
    "VerifyRecord",
    "build",
    "fingerprint",
    "load_manifest",
    "read_manifest",
    "resolve_source",
    "save_manifest",
    "sha256_file",
    "write_manifest",
]
