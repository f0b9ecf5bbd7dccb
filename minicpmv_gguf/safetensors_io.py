"""Lazy, validated reading of safetensors files without torch.

The header is checked in full before any tensor is read (offsets inside the file, no overlaps, byte
sizes that match dtype x shape), so a corrupt or truncated file fails with one clear message instead
of a wrong GGUF. Tensors are read in row chunks, so memory never holds more than one chunk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .native.ggml import bf16_to_f32

# dtypes we convert; other valid safetensors dtypes are refused by name.
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
KNOWN_DTYPES = {
    "F64",
    "I64",
    "I32",
    "I16",
    "I8",
    "U8",
    "U16",
    "U32",
    "U64",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
    "F8_E8M0",
    "F6_E2M3",
    "F6_E3M2",
    "F4",
    "C64",
} | set(ITEMSIZE)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
CHUNK_BYTES = 32 * 1024 * 1024  # rows read per step: bounds peak memory, large enough to stay fast


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: file, absolute offset, dtype and shape (nothing is read yet)."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.n_rows if self.n_rows else 0


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one safetensors header.

    Raises:
        CheckpointError: the file is truncated, its header is not valid JSON, an entry is malformed,
            a dtype is unsupported, or byte ranges do not fit the file or overlap.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            n = int.from_bytes(head, "little")
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: corrupt safetensors header: declares {n} header bytes, file has {size}")
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from err
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header: not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    refs = [_parse_entry(path, name, entry, data_start) for name, entry in header.items() if name != "__metadata__"]
    _check_ranges(path, refs, data_start, data_size)
    return {r.name: r for r in refs}


def _parse_entry(path: Path, name: str, entry: object, data_start: int) -> TensorRef:
    bad = f"{path}: corrupt safetensors header: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{bad} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in KNOWN_DTYPES:
        raise CheckpointError(f"{bad} has unknown dtype {dtype!r}")
    if dtype not in ITEMSIZE:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 are supported")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"{bad} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{bad} has invalid data_offsets {offsets!r}")
    # Python ints: a huge declared shape is only arithmetic here, never an allocation.
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{bad} holds {offsets[1] - offsets[0]} bytes but {dtype} {tuple(shape)} needs {expected}"
        )
    return TensorRef(name, path, dtype, tuple(shape), data_start + offsets[0], expected)


def _check_ranges(path: Path, refs: list[TensorRef], data_start: int, data_size: int) -> None:
    end = data_start
    for r in sorted(refs, key=lambda r: (r.offset, r.nbytes)):
        if r.offset < end:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {r.name!r} overlaps another tensor")
        end = r.offset + r.nbytes
    if end > data_start + data_size:
        raise CheckpointError(
            f"{path}: truncated: tensors need {end - data_start} data bytes, the file has {data_size}"
        )


def _to_f32(buf: np.ndarray, dtype: str) -> np.ndarray:
    """Raw little-endian bytes -> float32 (bf16 is the high half of an f32)."""
    if dtype == "BF16":
        return bf16_to_f32(buf.view(np.uint16))
    return buf.view(np.float16 if dtype == "F16" else np.float32).astype(np.float32, copy=False)


def read_rows(ref: TensorRef, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a tensor as float32, shaped (stop - start, *shape[1:])."""
    buf = read_raw(ref, start, stop)
    return _to_f32(buf, ref.dtype).reshape((stop - start, *ref.shape[1:]) if ref.shape else ())


def read_raw(ref: TensorRef, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as raw bytes (uint8), as stored on disk."""
    n = (stop - start) * ref.row_bytes
    buf = np.empty(n, dtype=np.uint8)
    try:
        with open(ref.path, "rb") as f:
            f.seek(ref.offset + start * ref.row_bytes)
            got = f.readinto(memoryview(buf))
    except OSError as err:
        raise CheckpointError(f"{ref.path}: cannot read tensor {ref.name!r}: {err.strerror}") from err
    if got != n:  # the file shrank after its header was validated
        raise CheckpointError(f"{ref.path}: truncated while reading tensor {ref.name!r}")
    return buf


def read_tensor(ref: TensorRef) -> np.ndarray:
    """The whole tensor as float32."""
    return read_rows(ref, 0, ref.n_rows)


def row_chunks(ref: TensorRef, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of at most about chunk_bytes of f32 each."""
    rows_per = max(1, chunk_bytes // max(1, ref.row_bytes // ITEMSIZE[ref.dtype] * 4))
    for start in range(0, ref.n_rows, rows_per):
        yield start, min(start + rows_per, ref.n_rows)
