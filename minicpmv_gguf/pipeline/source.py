"""A build's SOURCE: a local checkpoint directory or a Hugging Face repo id, and its content fingerprint.

The fingerprint is a sha256 over every checkpoint file's name, size and sha256, so a checkpoint
retrained in place (same shapes, new weights) is a different source. Hashes are cached in the
manifest by (size, mtime): a rerun on an unchanged checkpoint hashes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import SourceError
from .records import SourceFile, Where

# The files a conversion reads (config, weights, tokenizer, templates, model card); the hub download takes these only.
SOURCE_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "README.md")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_CHUNK = 8 << 20
HUB_TIMEOUT = 5.0  # seconds: connecting to the hub, and its metadata requests


@dataclass(frozen=True)
class Source:
    """A checkpoint directory on disk, and where it came from."""

    path: Path
    kind: str  # "local" or "hub"
    repo_id: str | None = None
    revision: str | None = None  # the hub commit
    name: str | None = None  # general.name of the GGUFs (None: the directory's name)
    url: str | None = None  # general.source.url (None: from config.json)

    def describe(self) -> str:
        return f"{self.repo_id}@{(self.revision or '?')[:12]}" if self.kind == "hub" else str(self.path)


def resolve_source(source: str | Path, *, revision: str | None = None, timeout: float = HUB_TIMEOUT) -> Source:
    """A local checkpoint directory as is, or a repo id (`owner/name`) downloaded from the Hugging Face hub.

    Raises:
        SourceError: neither a directory nor a repo id; huggingface_hub missing; the hub unreachable
            and the repo not in the local cache; the repo or revision unknown.
    """
    path = Path(source)
    if path.is_dir():
        if revision:
            raise SourceError(f"{source}: --revision applies to a Hugging Face repo id, not a local directory")
        return Source(path.resolve(), "local")
    if path.exists():
        raise SourceError(f"{source}: not a directory (give a checkpoint directory or a Hugging Face repo id)")
    if not _REPO_ID.fullmatch(str(source)):
        raise SourceError(f"{source}: no such directory, and not a Hugging Face repo id (owner/name)")
    return _download(str(source), revision, timeout)


def _download(repo_id: str, revision: str | None, timeout: float) -> Source:
    try:
        from huggingface_hub import constants, errors, snapshot_download
    except ImportError:
        raise SourceError(
            f"{repo_id}: downloading a Hugging Face repo needs huggingface_hub "
            "(pip install huggingface_hub), or give a local checkpoint directory"
        ) from None
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    reason = "HF_HUB_OFFLINE is set" if offline else _unreachable(constants.ENDPOINT, timeout)
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(SOURCE_PATTERNS),
                local_files_only=bool(reason),
                etag_timeout=timeout,
            )
        )
    except errors.LocalEntryNotFoundError:
        raise SourceError(
            f"{repo_id}: {reason or 'the download failed'} and the repo is not in the local Hugging Face "
            "cache; download it where the hub is reachable, or give a local checkpoint directory"
        ) from None
    except _hub_errors(errors) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(f"{repo_id}: cannot download it from the Hugging Face hub: {first}") from err
    # snapshot_download returns .../snapshots/<commit>; the commit pins what was converted.
    return Source(path, "hub", repo_id, path.name, repo_id.split("/")[1], f"https://huggingface.co/{repo_id}")


def _hub_errors(errors) -> tuple[type[BaseException], ...]:
    """What snapshot_download raises for a repo it cannot fetch; anything else is a bug and is not hidden.

    OSError covers disk errors and requests' network errors (huggingface_hub < 1); errors.HTTPError is the
    HTTP client's base class, httpx's in huggingface_hub >= 1, whose connection errors are not OSErrors.
    """
    return (
        errors.HfHubHTTPError,  # RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, 5xx, ...
        errors.HFValidationError,  # a repo id the hub refuses, such as "a--b/c"
        getattr(errors, "HTTPError", OSError),
        OSError,
    )


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """Why the hub cannot be reached, or None; a proxy is left to the hub client (and its timeouts)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.strerror or type(err).__name__})"


def source_files(path: Path) -> list[Path]:
    """The checkpoint files a conversion reads, by name."""
    files = {
        p for pattern in SOURCE_PATTERNS for p in Path(path).glob(pattern) if p.is_file() and not p.name.startswith(".")
    }
    return sorted(files, key=lambda p: p.name)


def fingerprint(
    path: Path,
    cache: Mapping[str, SourceFile | Mapping] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[str, SourceFile]]:
    """(sha256 of the checkpoint's content, {file name: SourceFile}).

    `cache` holds earlier records of the same directory; a file whose size and mtime match is not re-read.
    """
    # verify passes the manifest's JSON (read_manifest)
    cache = {n: r if isinstance(r, SourceFile) else SourceFile.from_json(r, Where()) for n, r in (cache or {}).items()}
    stats = {p.name: (p, p.stat()) for p in source_files(path)}
    todo = {name for name, (_, st) in stats.items() if not _cached(cache.get(name), st)}
    total, done = sum(stats[n][1].st_size for n in todo), 0
    records = {}
    for name, (p, st) in stats.items():
        if name in todo:

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total)

            sha = sha256_file(p, step)
        else:
            sha = cache[name].sha256
        records[name] = SourceFile(st.st_size, st.st_mtime_ns, sha)
    digest = hashlib.sha256("".join(f"{n}\t{r.size}\t{r.sha256}\n" for n, r in records.items()).encode())
    return digest.hexdigest(), records


def _cached(record: SourceFile | None, st: os.stat_result) -> bool:
    return record is not None and (record.size, record.mtime_ns) == (st.st_size, st.st_mtime_ns)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's sha256; `progress` gets the bytes read after each 8 MB chunk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()
