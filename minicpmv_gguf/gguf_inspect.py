"""inspect_gguf: a GGUF file's key/values and tensors in a readable form, from the header alone.

The fast header reader skips tensor data and reads only the first items of each array, so the
full-size LM (a 248k-entry vocabulary) is summarised in well under a second.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType

from .gguf_io import ArraySummary, GGUFHeader, read_gguf_header

_SHORT_TYPES = {
    "UINT8": "u8",
    "INT8": "i8",
    "UINT16": "u16",
    "INT16": "i16",
    "UINT32": "u32",
    "INT32": "i32",
    "FLOAT32": "f32",
    "BOOL": "bool",
    "STRING": "str",
    "ARRAY": "array",
    "UINT64": "u64",
    "INT64": "i64",
    "FLOAT64": "f64",
}
_MAX_TEXT = 60  # characters of a string value shown before it is cut


@dataclass(frozen=True)
class TypeRow:
    """The tensors of one GGML type: how many, their parameters and bytes."""

    ggml_type: str
    n_tensors: int
    n_params: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFSummary:
    """A GGUF header, ready to print: key/values, tensor types by size, and (on request) every tensor."""

    path: Path
    file_size: int
    header: GGUFHeader
    problems: list[str] = field(default_factory=list)  # why the runtime would refuse it (its LM/mmproj checks)

    @property
    def by_type(self) -> list[TypeRow]:
        """One row per tensor type, largest first."""
        count, params, size = Counter(), Counter(), Counter()
        for t in self.header.tensors:
            count[t.ggml_type] += 1
            params[t.ggml_type] += int(np.prod(t.shape, dtype=np.int64))
            size[t.ggml_type] += t.nbytes
        return [TypeRow(k, count[k], params[k], size[k]) for k in sorted(size, key=lambda k: -size[k])]

    def text(self, *, tensors: bool = False) -> str:
        h = self.header
        lines = [
            f"{self.path}: GGUF v{h.version}, {_mb(self.file_size)}, {len(h.kv_types or {})} key/values, "
            f"{len(h.tensors)} tensors (data from byte {h.data_offset:,})",
            "",
            "key/values",
        ]
        width = max((len(k) for k in h.kv_types or {}), default=0)
        for key, vtype in (h.kv_types or {}).items():
            value = h.kvs.get(key)
            shown_type = (
                f"[{_SHORT_TYPES.get(value.type, value.type)}]"
                if isinstance(value, ArraySummary)
                else _SHORT_TYPES.get(vtype, vtype)
            )
            lines.append(f"  {key:<{width}}  {shown_type:<7} {_format_value(key, value)}")
        lines += ["", "tensors by type", f"  {'type':<8} {'tensors':>8} {'parameters':>15} {'bytes':>11} {'share':>7}"]
        rows, total = self.by_type, sum(t.nbytes for t in h.tensors) or 1
        for r in rows:
            lines.append(
                f"  {r.ggml_type:<8} {r.n_tensors:>8,} {r.n_params:>15,} {_mb(r.n_bytes):>11} {r.n_bytes / total:>7.1%}"
            )
        n_params = sum(r.n_params for r in rows)
        lines.append(
            f"  {'total':<8} {len(h.tensors):>8,} {n_params:>15,} {_mb(sum(r.n_bytes for r in rows)):>11} "
            f"{8 * total / max(n_params, 1):>5.2f} bits per weight"
        )
        if self.problems:
            lines += ["", f"problems ({len(self.problems)}: the runtime refuses this file)"]
            lines += [f"  {p}" for p in self.problems]
        if tensors:
            name_width = max((len(t.name) for t in h.tensors), default=0)
            lines += ["", "tensors"]
            lines += [
                f"  {t.name:<{name_width}}  {t.ggml_type:<6} {str(list(t.shape)):<22} {_mb(t.nbytes):>11}"
                for t in h.tensors
            ]
        return "\n".join(lines)


def inspect_gguf(path: Path, *, array_head: int = 6) -> GGUFSummary:
    """Read a GGUF header (never its tensor data) for printing; arrays keep their first `array_head` items.

    Raises:
        GGUFError: missing, truncated, or not a GGUF file.
    """
    path = Path(path)
    from .runtime.headers import gguf_problems  # the runtime's checks, for this toolkit's own two kinds

    header = read_gguf_header(path, array_head=array_head)
    return GGUFSummary(path, path.stat().st_size, header, gguf_problems(path))


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, ArraySummary):
        items = ", ".join(_format_value("", v) for v in value.head)
        more = ", ..." if value.length > len(value.head) else ""
        return f"{value.length:,} items: [{items}{more}]" if value.head else f"{value.length:,} items"
    if isinstance(value, str):
        shown = repr(value[:_MAX_TEXT]) + ("..." if len(value) > _MAX_TEXT else "")
        return shown + (f" ({len(value):,} chars)" if len(value) > _MAX_TEXT else "")
    if isinstance(value, float):
        return f"{value:g}"
    if key == "general.file_type" and isinstance(value, int):
        try:
            return f"{value} ({LlamaFileType(value).name.removeprefix('MOSTLY_')})"
        except ValueError:
            return str(value)
    return str(value)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"
