"""Writing GGUF files atomically and tensor by tensor, and reading their metadata back.

gguf-py's GGUFWriter writes the header, key/values and tensor infos; tensor data is then streamed in
chunks so no tensor has to be in memory whole. Output goes to a hidden `.part` file beside the
target and is renamed only when complete: an error or Ctrl-C never leaves a file under the final name.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from .errors import GGUFError, OutputError

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]  # (bytes just written, tensor name)


class KV(NamedTuple):
    """One metadata row: key, value and the exact GGUF type llama.cpp expects."""

    key: str
    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorOut:
    """One tensor to write: torch-order shape, GGML type, and a generator of its bytes in order."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    chunks: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.ggml_type)


def tensor_nbytes(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    n = math.prod(shape)  # Python ints: a corrupt header's huge shape cannot wrap around
    assert n % block == 0, (shape, ggml_type)
    return n // block * type_size


def check_output(out: Path, *, overwrite: bool) -> None:
    """Fail early, before any long work, if `out` cannot or must not be written."""
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output directory does not exist")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"{out.parent}: output directory is not writable")


@contextmanager
def atomic_output(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it to `out` only if the block succeeds.

    The temporary file is `.NAME.PID.part`; those of earlier runs that were killed are removed first.
    """
    check_output(out, overwrite=overwrite)
    remove_stale_parts(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.part"
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as err:  # ENOSPC, EACCES, EROFS...: the output side, not a bug of ours
        raise OutputError(f"{out}: cannot write: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_parts(out: Path) -> list[Path]:
    """Delete the `.NAME.PID.part` files of `out` whose process is gone (a SIGKILL or power cut).

    Only regular files named exactly like atomic_output's, for this `out`, and whose PID is not a
    running process are removed: a live run's file, or anything else, is left alone.
    """
    removed = []
    prefix = f".{out.name}."
    for part in out.parent.glob(f"{glob.escape(prefix)}*.part"):
        pid = part.name[len(prefix) : -len(".part")]
        if not (pid.isascii() and pid.isdigit()) or _pid_alive(int(pid)) or part.is_symlink() or not part.is_file():
            continue
        try:
            part.unlink()
        except FileNotFoundError:  # its owner or another run removed it meanwhile
            continue
        removed.append(part)
        log.info("removed %s, left by an interrupted run (process %s)", part, pid)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid > 2**22:  # not a PID this kernel hands out (pid_max <= 2^22): keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_gguf(
    out: Path,
    arch: str,
    kvs: list[KV],
    tensors: list[TensorOut],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> int:
    """Write a complete GGUF file atomically; return the number of bytes written."""
    with atomic_output(out, overwrite=overwrite) as tmp:
        writer = GGUFWriter(tmp, arch)
        for kv in kvs:
            writer.add_key_value(kv.key, kv.value, kv.type, kv.sub_type)
        for t in tensors:
            # raw_dtype carries the type; the numpy dtype argument is then unused.
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        for t in tensors:
            writer.write_padding(fout, fout.tell())
            written = 0
            for chunk in t.chunks():
                fout.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.nbytes
                if progress:
                    progress(chunk.nbytes, t.name)
            assert written == t.nbytes, (t.name, written, t.nbytes)
            writer.write_padding(fout, written)
        writer.close()
        size = tmp.stat().st_size
    return size


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as stored in a GGUF file; shape in torch order (outermost first)."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int | None = field(default=None, compare=False)  # from the start of the tensor data (read_gguf_header)


def read_metadata(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """All key/values (decoded) and tensor infos of a GGUF file."""
    reader = GGUFReader(path)
    kvs = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [
        TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
        for t in reader.tensors
    ]
    return kvs, tensors


def read_kv_types(path: Path) -> dict[str, tuple[GGUFValueType, ...]]:
    """The stored GGUF type(s) of every key (array keys list the element type last)."""
    return {name: tuple(field.types) for name, field in GGUFReader(path).fields.items() if not name.startswith("GGUF.")}


# GGUF value types -> struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class ArraySummary:
    """An array key/value read in part: its element type, its length and its first items."""

    type: str  # GGUFValueType name of the elements, e.g. "STRING", "INT32", "ARRAY"
    length: int
    head: tuple
    offset: int = field(default=0, compare=False)  # where the first item starts in the file


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF's scalar and string key/values (arrays skipped or summarised) and its tensor infos."""

    kvs: dict[str, Any]
    tensors: list[TensorInfo]
    version: int = 3
    kv_types: dict[str, str] | None = None  # key -> GGUFValueType name
    data_offset: int = 0  # where tensor data starts (after the header, aligned)


def read_gguf_header(path: Path, *, array_head: int = 0) -> GGUFHeader:
    """Read a GGUF header fast: arrays (the 248k-token vocabulary) are skipped, tensor data never read.

    gguf-py's GGUFReader parses every array, which dominates the time to open a model (README, "Speed
    and memory"). Use `read_metadata` when array values are needed.
    Args:
        array_head: when > 0, arrays are kept in `kvs` as ArraySummary with this many first items.
    Raises:
        GGUFError: missing, truncated, or not a GGUF v2/v3 file.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or (version := _read(f, "<I")) not in (2, 3):
                raise ValueError("no GGUF v2/v3 header")
            kvs, types, limit = {}, {}, path.stat().st_size  # no count or length in a sane header exceeds the file size
            n_tensors, n_kv = _read(f, "<Q", 2)
            for _ in range(_checked(n_kv, limit)):
                key, vtype = _read_string(f, limit), _read(f, "<I")
                types[key] = GGUFValueType(vtype).name
                if vtype == 9:
                    head = _skip_array(f, limit, array_head)
                    if array_head:
                        kvs[key] = head
                else:
                    kvs[key] = _read_string(f, limit) if vtype == 8 else _read(f, _GGUF_SCALARS[vtype])
            tensors = [_read_tensor_info(f, limit) for _ in range(_checked(n_tensors, limit))]
            align = kvs.get("general.alignment", 32)
            offset = -(-f.tell() // align) * align if isinstance(align, int) and align > 0 else f.tell()
            return GGUFHeader(kvs, tensors, version, types, offset)
    except struct.error as err:  # a read came back short
        raise GGUFError(f"{path}: not a readable GGUF file (truncated: the header ends early)") from err
    except (OSError, ValueError, KeyError) as err:  # unknown type, not UTF-8, lengths past the end
        raise GGUFError(f"{path}: not a readable GGUF file ({err})") from err


def _read_tensor_info(f: BinaryIO, limit: int) -> TensorInfo:
    name = _read_string(f, limit)
    n_dims = _checked(_read(f, "<I"), 8)
    dims = _read(f, "<Q", n_dims) if n_dims > 1 else (_read(f, "<Q"),) if n_dims else ()
    ggml_type = GGMLQuantizationType(_read(f, "<I"))
    offset = _read(f, "<Q")
    shape = tuple(int(d) for d in reversed(dims))  # ggml order -> torch order
    if math.prod(shape) % GGML_QUANT_SIZES[ggml_type][0]:
        raise ValueError(f"tensor {name!r}: {shape} is not whole {ggml_type.name} blocks")
    return TensorInfo(name, ggml_type.name, shape, tensor_nbytes(shape, ggml_type), offset)


def check_gguf_complete(path: Path, *, array_head: int = 0) -> GGUFHeader:
    """read_gguf_header, and every tensor's data inside the file: a truncated GGUF fails here, by name.

    llama.cpp makes the same check when loading, but only after reading the header, and some tools
    (Ollama's import, gguf-py's reader) report truncation less clearly or not at all.
    Raises:
        GGUFError: not a readable GGUF, or truncated (a tensor's data runs past the end of the file).
    """
    path = Path(path)
    header = read_gguf_header(path, array_head=array_head)
    size = path.stat().st_size
    for t in header.tensors:
        end = header.data_offset + (t.offset or 0) + t.nbytes
        if end > size:
            raise GGUFError(
                f"{path}: truncated GGUF: tensor {t.name!r} ends at byte {end}, the file has {size} "
                "(an interrupted write, copy or download?)"
            )
    return header


def _read(f: BinaryIO, fmt: str, n: int = 1) -> Any:
    values = struct.unpack(f"<{n}{fmt[1:]}", f.read(n * struct.calcsize(fmt)))
    return values if n > 1 else values[0]


def _read_string(f: BinaryIO, limit: int) -> str:
    n = _checked(_read(f, "<Q"), limit)
    data = f.read(n)
    if len(data) < n:
        raise struct.error("a string runs past the end of the file")
    return data.decode("utf-8")


def _checked(n: int, limit: int) -> int:
    if n > limit:
        raise ValueError(f"a length of {n} in a {limit}-byte file")
    return n


def _skip_array(f: BinaryIO, limit: int, keep: int = 0) -> ArraySummary | None:
    """Skip an array value; with keep > 0, return its type, length and first `keep` items."""
    vtype, n = _read(f, "<I"), _checked(_read(f, "<Q"), limit)
    offset, head = f.tell(), []
    if vtype in _GGUF_SCALARS:
        size = struct.calcsize(_GGUF_SCALARS[vtype])
        k = min(n, keep)
        head = [_read(f, _GGUF_SCALARS[vtype]) for _ in range(k)]
        f.seek((n - k) * size, 1)
    elif vtype == 8:
        for i in range(n):
            if i < keep:
                head.append(_read_string(f, limit))
            else:
                f.seek(_read(f, "<Q"), 1)
    elif vtype == 9:
        for i in range(n):
            sub = _skip_array(f, limit, keep if i < keep else 0)
            if i < keep:
                head.append(sub)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")
    return ArraySummary(GGUFValueType(vtype).name, n, tuple(head), offset) if keep else None


def read_strings(path: Path, array: ArraySummary, end: int) -> list[bytes]:
    """Every item of a string array that `read_gguf_header` summarised (`end`: its header's data_offset).

    One read and a loop over lengths: for a 248k-token vocabulary far faster than gguf-py's reader.
    """
    with open(path, "rb") as f:
        f.seek(array.offset)
        blob = f.read(end - array.offset)
    items, pos = [], 0
    for _ in range(array.length):
        n = int.from_bytes(blob[pos : pos + 8], "little")
        items.append(blob[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return items
