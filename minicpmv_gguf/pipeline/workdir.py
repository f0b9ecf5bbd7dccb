"""The build directory: one build at a time (an flock), leftovers of killed runs, and who owns it."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import OutputError
from .records import MANIFEST, Manifest

log = logging.getLogger(__name__)

LOCK = ".minicpmv-gguf.lock"
# Temporaries of atomic_output (".NAME.PID.part"), of the Ollama packager (".NAME.PID.part/", ".NAME.PID.old/").
_PARTIAL = re.compile(r"\..+\.\d+\.(part|old)")


class BuildLock:
    """An exclusive, non-blocking flock on DIR/.minicpmv-gguf.lock, released when the process ends.

    The lock file stays: deleting it could let two builds each lock their own file.
    """

    def __init__(self, out_dir: Path, what: str = "build") -> None:
        self.path, self.what, self.fd = Path(out_dir) / LOCK, what, -1

    def __enter__(self) -> BuildLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"{self.path.parent}: cannot write here: {err.strerror or err}") from err
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise OutputError(
                f"{self.path.parent}: another build or verify ({holder or 'unknown process'}) is using "
                "this directory; wait for it to finish or choose another directory"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{self.what}, pid {os.getpid()}".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the flock


def is_ours(name: str) -> bool:
    """The lock file or a leftover temporary of a killed run: not content of the directory."""
    return name == LOCK or bool(_PARTIAL.fullmatch(name))


def has_content(out_dir: Path) -> bool:
    """Anything in the directory besides our lock file and leftovers of killed runs."""
    return any(not is_ours(p.name) for p in Path(out_dir).iterdir())


def clean_partials(out_dir: Path) -> list[str]:
    """Delete temporaries a killed run left (only while holding the lock); return their names."""
    removed = []
    for p in Path(out_dir).iterdir():
        if _PARTIAL.fullmatch(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    if removed:
        log.info("removed %d partial file(s) left by an interrupted run: %s", len(removed), ", ".join(sorted(removed)))
    return sorted(removed)


def check_out_dir(out_dir: Path, source_path: Path) -> None:
    """Fail before any work if DIR cannot be a build directory.

    Raises:
        OutputError: DIR is a file, its parent is missing, or DIR is (or is inside) the checkpoint.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a directory")
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise OutputError(f"{out_dir.parent}: does not exist (create it, or choose another output directory)")
    resolved, src = out_dir.resolve(), Path(source_path).resolve()
    if resolved == src or src in resolved.parents:
        raise OutputError(f"{out_dir}: is the checkpoint directory or inside it; choose another output directory")


def refuse_foreign(out_dir: Path, manifest: Manifest | None, fingerprint: str | None, *, force: bool) -> None:
    """Only an earlier build of the same source may be resumed; anything else needs --force.

    Raises:
        OutputError: DIR holds files and is not a build of this source, and force is not set.
    """
    if force:
        return
    if manifest is None:
        if Path(out_dir).is_dir() and has_content(out_dir):
            raise OutputError(
                f"{out_dir}: exists, is not empty and has no {MANIFEST} (not a minicpmv-gguf build); "
                "use --force to build into it anyway, or choose another directory"
            )
        return
    if fingerprint is not None and manifest.source.fingerprint != fingerprint:
        raise OutputError(
            f"{out_dir}: holds a build of a different source ({manifest.source.describe}); use --force to replace it, "
            "or choose another directory"
        )
