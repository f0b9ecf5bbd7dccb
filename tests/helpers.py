"""Helpers that several test modules share: the CLI as a user runs it, file edits, and what a refusal leaves."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path


def run_cli(*args, stdin: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m minicpmv_gguf.cli ARGS` in a child process, text output captured; kwargs go to subprocess.run."""
    return subprocess.run(
        [sys.executable, "-m", "minicpmv_gguf.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def tree_digest(path: Path) -> str:
    """A digest of every file under path (names and bytes): proves inputs were not modified."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, edit) -> None:
    """Load the JSON file, let `edit` change the object in place, write it back."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def assert_refused(r: subprocess.CompletedProcess, message: str, names: Path, out_dir: Path) -> str:
    """exit != 0, no traceback, one `Error:` line holding `message` and the file `names`, out_dir empty."""
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and str(names) in errors[0], r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [], "left on disk"
    return errors[0]
