"""Writing GGUF files atomically and tensor by tensor, and reading their metadata back.

gguf-py's GGUFWriter writes the header, key/values and tensor infos; tensor data is then streamed in
chunks so no tensor has to be in memory whole. Output goes to a hidden `.part` file beside the
target and is renamed only when complete: an error or Ctrl-C never leaves a file under the final name.
"""

from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from .errors import GGUFError, OutputError

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
    n = int(np.prod(shape, dtype=np.int64))
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
    """Yield a temporary path beside `out`; rename it to `out` only if the block succeeds."""
    check_output(out, overwrite=overwrite)
    tmp = out.parent / f".{out.name}.{os.getpid()}.part"
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as err:  # ENOSPC, EACCES, EROFS...: the output side, not a bug of ours
        raise OutputError(f"{out}: cannot write: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(out: Path, arch: str, kvs: list[KV], tensors: list[TensorOut], *,
               overwrite: bool = False, progress: Progress | None = None) -> int:
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


def read_metadata(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """All key/values (decoded) and tensor infos of a GGUF file."""
    reader = GGUFReader(path)
    kvs = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
               for t in reader.tensors]
    return kvs, tensors


def read_kv_types(path: Path) -> dict[str, tuple[GGUFValueType, ...]]:
    """The stored GGUF type(s) of every key (array keys list the element type last)."""
    return {name: tuple(field.types) for name, field in GGUFReader(path).fields.items()
            if not name.startswith("GGUF.")}


# GGUF value types -> struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF's scalar and string key/values (arrays skipped) and its tensor infos."""

    kvs: dict[str, Any]
    tensors: list[TensorInfo]


def read_gguf_header(path: Path) -> GGUFHeader:
    """Read a GGUF header fast: arrays (the 248k-token vocabulary) are skipped, tensor data never read.

    gguf-py's GGUFReader parses every array: 13.5 s and 870 MB on the full-size LM; this takes
    milliseconds. Use `read_metadata` when array values are needed.
    Raises:
        GGUFError: missing, truncated, or not a GGUF v2/v3 file.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or _read(f, "<I") not in (2, 3):
                raise ValueError("no GGUF v2/v3 header")
            kvs, limit = {}, path.stat().st_size  # no count or length in a sane header exceeds the file size
            n_tensors, n_kv = _read(f, "<Q", 2)
            for _ in range(_checked(n_kv, limit)):
                key, vtype = _read_string(f, limit), _read(f, "<I")
                if vtype == 9:
                    _skip_array(f, limit)
                else:
                    kvs[key] = _read_string(f, limit) if vtype == 8 else _read(f, _GGUF_SCALARS[vtype])
            tensors = [_read_tensor_info(f, limit) for _ in range(_checked(n_tensors, limit))]
            return GGUFHeader(kvs, tensors)
    except (OSError, struct.error, ValueError, KeyError) as err:  # truncated, unknown type, not UTF-8
        raise GGUFError(f"{path}: not a readable GGUF file ({err})") from err


def _read_tensor_info(f: BinaryIO, limit: int) -> TensorInfo:
    name = _read_string(f, limit)
    n_dims = _checked(_read(f, "<I"), 8)
    dims = _read(f, "<Q", n_dims) if n_dims > 1 else (_read(f, "<Q"),) if n_dims else ()
    ggml_type = GGMLQuantizationType(_read(f, "<I"))
    _read(f, "<Q")  # data offset
    shape = tuple(int(d) for d in reversed(dims))  # ggml order -> torch order
    return TensorInfo(name, ggml_type.name, shape, tensor_nbytes(shape, ggml_type))


def _read(f: BinaryIO, fmt: str, n: int = 1) -> Any:
    values = struct.unpack(f"<{n}{fmt[1:]}", f.read(n * struct.calcsize(fmt)))
    return values if n > 1 else values[0]


def _read_string(f: BinaryIO, limit: int) -> str:
    return f.read(_checked(_read(f, "<Q"), limit)).decode("utf-8")


def _checked(n: int, limit: int) -> int:
    if n > limit:
        raise ValueError(f"a length of {n} in a {limit}-byte file")
    return n


def _skip_array(f: BinaryIO, limit: int) -> None:
    vtype, n = _read(f, "<I"), _checked(_read(f, "<Q"), limit)
    if vtype in _GGUF_SCALARS:
        f.seek(n * struct.calcsize(_GGUF_SCALARS[vtype]), 1)
    elif vtype == 8:
        for _ in range(n):
            f.seek(_read(f, "<Q"), 1)
    elif vtype == 9:
        for _ in range(n):
            _skip_array(f, limit)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")
