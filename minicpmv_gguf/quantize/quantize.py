"""quantize_lm: an F32/F16/BF16 LM GGUF -> Q4_K_M (or another llama.cpp type) with llama.cpp's own quantizer.

This is a thin, safe wrapper over llama-cpp-python's `llama_model_quantize` binding: type names as
llama-quantize spells them, per-tensor overrides, named recipes, an importance matrix in llama.cpp's
imatrix GGUF format, an atomic output file, and llama.cpp's log turned into one-line errors.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

from ..errors import QuantizeError
from ..gguf_io import atomic_output, check_gguf_complete, read_gguf_header
from ..native import quantize_model

# llama-quantize's names -> llama_ftype (include/llama.h). MoE-only and ternary types are left out.
QUANT_TYPES = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q8_0": 7,
    "Q2_K": 10,
    "Q2_K_S": 21,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ1_S": 24,
    "IQ1_M": 31,
    "IQ2_XXS": 19,
    "IQ2_XS": 20,
    "IQ2_S": 28,
    "IQ2_M": 29,
    "IQ3_XXS": 23,
    "IQ3_XS": 22,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "F16": 1,
    "BF16": 32,
    "F32": 0,
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# llama.cpp refuses these without an importance matrix ("the result will be garbage").
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"}

# Named recipes: a base type plus tensors kept at higher precision.
RECIPES = {
    # Qwen3.5-0.8B measurement: attn_gate, attn_qkv and ssm_out at Q8_0 cut mean KLD 0.036 -> 0.030.
    "Q4_K_M-sensitive": (
        "Q4_K_M",
        {r"attn_gate\.weight": "Q8_0", r"attn_qkv\.weight": "Q8_0", r"ssm_out\.weight": "Q8_0"},
    ),
}


@dataclass(frozen=True)
class QuantizeResult:
    """What quantize_lm wrote."""

    out: Path
    qtype: str
    in_bytes: int
    out_bytes: int
    n_params: int
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.out_bytes / self.n_params

    def summary(self) -> str:
        return (
            f"wrote {self.out}: {self.qtype}, {self.out_bytes / 1e6:.1f} MB ({self.bits_per_weight:.2f} bits per "
            f"weight), from {self.in_bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        )


def resolve_type(name: str) -> str:
    """A llama-quantize type name (any case, aliases allowed) -> its canonical name."""
    upper = ALIASES.get(name.upper(), name.upper())
    if upper not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return upper


def parse_overrides(specs: list[str]) -> dict[str, str]:
    """["PATTERN=TYPE", ...] (llama-quantize's --tensor-type) -> {regex: ggml type name}."""
    out = {}
    for spec in specs:
        pattern, sep, type_name = spec.rpartition("=")
        if not sep or not pattern:
            raise QuantizeError(f"tensor type override {spec!r}: expected PATTERN=TYPE, e.g. attn_qkv=q8_0")
        _ggml_type(type_name)
        try:
            re.compile(pattern)
        except re.error as err:
            raise QuantizeError(f"tensor type override {spec!r}: bad pattern ({err})") from err
        out[pattern] = type_name.upper()
    return out


def _ggml_type(name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        raise QuantizeError(f"unknown tensor type {name!r}") from None


def quantize_lm(
    src: Path,
    out: Path,
    *,
    qtype: str = "Q4_K_M",
    recipe: str | None = None,
    tensor_types: dict[str, str] | None = None,
    imatrix: Path | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize an LM GGUF with llama.cpp's quantizer.

    Args:
        src: an F32, F16 or BF16 LM GGUF (from `convert`).
        qtype: a llama-quantize type name (Q4_K_M default); ignored when `recipe` is given.
        recipe: a RECIPES name: a base type plus per-tensor overrides.
        tensor_types: extra {regex: ggml type} overrides, applied after the recipe's.
        imatrix: an importance matrix in llama.cpp's imatrix GGUF format (`minicpmv-gguf imatrix`).
        threads: quantizer threads (default: all cores).
        progress: called with (input tensor bytes done, in all) as llama.cpp moves from tensor to tensor.
    Raises:
        QuantizeError: unknown type, missing imatrix for a low-bit type, unreadable input, llama.cpp failure.
        OutputError: `out` exists without `overwrite`, or cannot be written.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    overrides: dict[str, str] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise QuantizeError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        qtype, overrides = RECIPES[recipe][0], dict(RECIPES[recipe][1])
    name = resolve_type(qtype)
    overrides.update(tensor_types or {})
    if name in NEEDS_IMATRIX and imatrix is None:
        raise QuantizeError(
            f"{name} needs an importance matrix: make one with `minicpmv-gguf imatrix` and pass --imatrix"
        )
    n_params = _check_input(src)
    with atomic_output(out, overwrite=overwrite) as tmp:
        _run_quantizer(
            src,
            tmp,
            QUANT_TYPES[name],
            overrides,
            load_imatrix(imatrix) if imatrix else None,
            threads,
            _tensor_progress(src, progress) if progress else None,
        )
        out_bytes = tmp.stat().st_size
    return QuantizeResult(out, name, src.stat().st_size, out_bytes, n_params, time.perf_counter() - t0)


def _check_input(src: Path) -> int:
    """The input's parameter count, after checking it is an unquantized LM GGUF."""
    if not src.is_file():
        raise QuantizeError(f"{src}: file not found")
    header = check_gguf_complete(src)  # truncated: refused by name, before llama.cpp reads it
    kv, tensors = header.kvs, header.tensors
    if kv.get("general.architecture") == "clip":
        raise QuantizeError(
            f"{src}: is an mmproj GGUF; llama.cpp's quantizer handles LM GGUFs only "
            "(write the mmproj with `minicpmv-gguf mmproj --outtype q8_0` instead)"
        )
    quantized = sorted({t.ggml_type for t in tensors} - {"F32", "F16", "BF16"})
    if quantized:
        raise QuantizeError(f"{src}: already quantized ({', '.join(quantized)}); start from the F16/BF16/F32 GGUF")
    return sum(int(np.prod(t.shape)) for t in tensors)


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama.cpp's imatrix GGUF -> {weight name: mean squared activation per input column}."""
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as err:
        raise QuantizeError(f"{path}: not a readable imatrix GGUF ({err})") from err
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out = {}
    for name, sums in tensors.items():
        if name.endswith(".in_sum2"):
            weight = name[: -len(".in_sum2")]
            counts = tensors.get(weight + ".counts")
            if counts is None:
                raise QuantizeError(f"{path}: {weight}.in_sum2 has no {weight}.counts")
            sums = sums.reshape(counts.size, -1)
            # Like llama-quantize: average over the tokens seen; a never-seen matrix weighs 1.
            out[weight] = (
                np.where(counts.reshape(-1, 1) > 0, sums / np.maximum(counts.reshape(-1, 1), 1), 1.0)
                .astype(np.float32)
                .ravel()
            )
    if not out:
        raise QuantizeError(f"{path}: no importance matrix entries (*.in_sum2)")
    return out


def _tensor_progress(src: Path, progress: Callable[[int, int], None]) -> Callable[[str], None]:
    """A log-line hook: llama.cpp's line "[ i/ n] NAME - ... size = ..." ends once NAME is written."""
    sizes = {t.name: t.nbytes for t in read_gguf_header(src).tensors}
    total, state = sum(sizes.values()), {"done": 0}

    def on_line(line: str) -> None:
        m = _TENSOR_LINE.match(line)
        if m:
            state["done"] += sizes.get(m.group(1), 0)
            progress(state["done"], total)

    return on_line


# Free space under which a failed quantizer run is taken as a full disk: its writes fill the disk to the
# last block before failing, so far less than this is left.
_FULL_DISK_BYTES = 1 << 20
_TENSOR_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)")


def _run_quantizer(
    src: Path,
    dst: Path,
    ftype: int,
    overrides: dict[str, str],
    imatrix: dict[str, np.ndarray] | None,
    threads: int | None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    types = {pattern: int(_ggml_type(type_name)) for pattern, type_name in overrides.items()}
    try:
        quantize_model(
            src,
            dst,
            ftype=ftype,
            overrides=types,
            imatrix=imatrix,
            threads=threads or os.cpu_count() or 1,
            on_line=on_line,
        )
    except QuantizeError:
        if shutil.disk_usage(dst.parent).free < _FULL_DISK_BYTES:
            # llama.cpp reports a failed write only as "iostream error"; atomic_output names the file.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst)) from None
        raise
