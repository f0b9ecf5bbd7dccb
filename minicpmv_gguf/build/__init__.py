"""One command from a checkpoint to the GGUFs, an Ollama package and a manifest: `build`, resumable and locked."""

from .manifest import MANIFEST, read_manifest, write_manifest
from .pipeline import build
from .progress import StageEvent, StageProgress
from .result import BuildResult, StageReport
from .source import Source, fingerprint, resolve_source, sha256_file
from .workdir import BuildLock

__all__ = [
    "MANIFEST",
    "BuildLock",
    "BuildResult",
    "Source",
    "StageEvent",
    "StageProgress",
    "StageReport",
    "build",
    "fingerprint",
    "read_manifest",
    "resolve_source",
    "sha256_file",
    "write_manifest",
]
