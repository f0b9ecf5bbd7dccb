"""Planning and writing converter tensors, shared by the LM and mmproj converters.

A tensor table is a tuple of Rules; `plan_tensors` maps every checkpoint tensor by exactly one rule
or a named skip prefix, else raises one TensorMapError listing all offenders. `tensor_out` then
streams each planned tensor: untransformed ones in row chunks (byte copies when the type is kept),
transformed ones (small: norms, ssm_a, conv1d, head reorders) whole.
Every chunk is checked for Inf and NaN before it is written (`all_finite`: integer tests on the stored
bits), so a damaged checkpoint or an F16 overflow is refused by tensor name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as Q

from .errors import CheckpointError, TensorMapError, ToolkitError
from .gguf_io import TensorOut
from .native.ggml import f32_to_bf16, f32_to_f16, quantize_rows
from .safetensors_io import TensorRef, read_raw, read_rows, read_tensor, row_chunks

Transform = Callable[[np.ndarray], np.ndarray]  # pure: float32 array -> float32 array
Delta = Callable[[int, int], np.ndarray]  # (start, stop) -> float32 rows added to the source before the transform


def keep(w: np.ndarray) -> np.ndarray:
    """No change (rows can then be streamed in chunks)."""
    return w


OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
# The mmproj also takes ggml's other 32-block types and k-quants (quantized by ggml's own kernels).
BLOCK_TYPES = {"q5_1": Q.Q5_1, "q5_0": Q.Q5_0, "q4_1": Q.Q4_1, "q4_0": Q.Q4_0, "iq4_nl": Q.IQ4_NL}
K_TYPES = {"q6_k": Q.Q6_K, "q5_k": Q.Q5_K, "q4_k": Q.Q4_K}
MMPROJ_OUTTYPES = {**OUTTYPES, **BLOCK_TYPES, **K_TYPES}
# A k-quant needs rows of 256; narrower rows take llama-quantize's 32-block fallback for that type.
K_FALLBACK = {Q.Q6_K: Q.Q8_0, Q.Q5_K: Q.Q5_1, Q.Q4_K: Q.Q5_0}
FILE_TYPES = {
    Q.F32: LlamaFileType.ALL_F32,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    Q.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    Q.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    Q.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    Q.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    Q.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL,
    Q.Q6_K: LlamaFileType.MOSTLY_Q6_K,
    Q.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
    Q.Q4_K: LlamaFileType.MOSTLY_Q4_K_M,
}


def block_size(t: Q) -> int:
    """Values per block: 1 for the float types, 32 for Q8_0/Q5_*/Q4_*/IQ4_NL, 256 for k-quants."""
    return GGML_QUANT_SIZES[t][0]


SOURCE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}


Shape = Callable[[Any], tuple[int, ...]]  # config -> expected shape


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor (per block when `hf` has {bid}) and the GGUF tensor it becomes."""

    hf: str
    gguf: str
    shape: Shape  # expected HF shape, from the config
    transform: Transform = keep
    dtype: str = "outtype"  # "f32" where llama.cpp needs it; "f16|f32" for conv kernels
    layers: str = "all"  # "all", "linear_attention" or "full_attention"
    optional: bool = False
    gguf_shape: Shape | None = None  # when the transform changes the shape


@dataclass(frozen=True)
class PlanRow:
    """One line of the conversion plan, as --dry-run prints it."""

    hf_name: str
    gguf_name: str
    source_dtype: str
    ggml_type: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: where it comes from, what it becomes, and how."""

    hf_name: str
    gguf_name: str
    source: TensorRef
    gguf_shape: tuple[int, ...]
    transform: Transform
    dtype: str
    bid: int | None
    delta: Delta | None = None  # a merged LoRA's B·A rows (lora.merge); None: the checkpoint's tensor as is


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$")


def plan_tensors(
    tensors: Iterable[TensorRef],
    rules: tuple[Rule, ...],
    c: Any,
    *,
    n_blocks: int,
    skip_prefixes: tuple[str, ...],
    layer_types: tuple[str, ...] | None = None,
) -> tuple[list[PlannedTensor], list[str]]:
    """Map every checkpoint tensor by exactly one rule, in GGUF-friendly order.

    Returns:
        (planned tensors, names skipped on purpose)
    Raises:
        TensorMapError: listing every unmapped tensor, tensor in the wrong layer type or block range,
            shape that disagrees with config.json, and required tensor that is missing.
    """
    kinds = layer_types or ("all",) * n_blocks
    compiled = [(rule, _compile(rule.hf)) for rule in rules]
    planned: list[PlannedTensor] = []
    skipped, problems, present = [], [], set()
    for ref in tensors:
        present.add(ref.name)  # a tensor with a problem is reported once, not also as missing
        if ref.name.startswith(skip_prefixes):
            skipped.append(ref.name)
            continue
        hits = [(rule, m) for rule, m in ((r, p.match(ref.name)) for r, p in compiled) if m]
        if len(hits) != 1:
            problems.append(f"{ref.name}: {'no rule maps it' if not hits else 'matched by several rules'}")
            continue
        rule, m = hits[0]
        bid = int(m.group("bid")) if "bid" in m.groupdict() else None
        if bid is not None and not (0 <= bid < n_blocks):
            problems.append(f"{ref.name}: layer {bid} is outside num_hidden_layers={n_blocks}")
            continue
        if bid is not None and rule.layers != "all" and kinds[bid] != rule.layers:
            problems.append(f"{ref.name}: layer {bid} is {kinds[bid]} in config.json")
            continue
        if ref.shape != rule.shape(c):
            problems.append(f"{ref.name}: shape {ref.shape}, config.json implies {rule.shape(c)}")
            continue
        gguf_shape = rule.gguf_shape(c) if rule.gguf_shape else ref.shape
        planned.append(
            PlannedTensor(ref.name, rule.gguf.format(bid=bid), ref, gguf_shape, rule.transform, rule.dtype, bid)
        )
    for rule in rules:
        bids = [None] if "{bid}" not in rule.hf else [b for b in range(n_blocks) if rule.layers in ("all", kinds[b])]
        problems += [
            f"{rule.hf.format(bid=b)}: missing"
            for b in bids
            if not rule.optional and rule.hf.format(bid=b) not in present
        ]
    if problems:
        raise TensorMapError(f"{len(problems)} tensor problem(s): " + "; ".join(problems))
    # Global tensors first, then blocks in order, as llama.cpp's own files are laid out.
    planned.sort(key=lambda p: (p.bid is not None, p.bid or 0, p.gguf_name))
    return planned, skipped


def resolve_outtype(outtype: str, planned: list[PlannedTensor], choices: dict[str, Q] = OUTTYPES) -> Q:
    if outtype == "auto":
        # The checkpoint's own float type: the first matrix decides, as in llama.cpp's converter.
        first = next(p for p in planned if len(p.gguf_shape) >= 2)
        return SOURCE_TYPES[first.source.dtype]
    if outtype not in choices:
        raise ToolkitError(f"outtype {outtype!r}: choose auto, {', '.join(choices)}")
    return choices[outtype]


def ggml_type_for(p: PlannedTensor, out_type: Q) -> Q:
    """The dtype policy: F32 where llama.cpp needs it, else the outtype (Q8_0 needs rows of 32)."""
    if p.dtype == "f32":
        return Q.F32
    if p.dtype == "f16|f32":  # ggml's conv kernels take F16 or F32 only
        return Q.F16 if out_type == Q.F16 else Q.F32
    if out_type in K_FALLBACK and p.gguf_shape[-1] % block_size(out_type):
        out_type = K_FALLBACK[out_type]
    if out_type == Q.Q8_0 and p.gguf_shape[-1] % 32:
        return Q.F16  # llama.cpp's converter falls back the same way (the mmproj converter refuses instead)
    return out_type


def plan_rows(planned: list[PlannedTensor], tensors: list[TensorOut]) -> list[PlanRow]:
    """The printable plan: one row per tensor."""
    return [
        PlanRow(p.hf_name, p.gguf_name, p.source.dtype, t.ggml_type.name, t.shape) for p, t in zip(planned, tensors)
    ]


def tensor_out(p: PlannedTensor, out_type: Q) -> TensorOut:
    ggml_type = ggml_type_for(p, out_type)
    return TensorOut(p.gguf_name, p.gguf_shape, ggml_type, lambda: _chunks(p, ggml_type))


def _chunks(p: PlannedTensor, ggml_type: Q) -> Iterator[np.ndarray]:
    if p.transform is not keep:
        w = p.transform(_source_rows(p, 0, p.source.n_rows))
        assert w.shape == p.gguf_shape, (p.hf_name, w.shape, p.gguf_shape)
        yield _finite(p, encode(w, ggml_type), ggml_type, w)
        return
    same_type = SOURCE_TYPES[p.source.dtype] == ggml_type and p.delta is None
    for start, stop in row_chunks(p.source):
        if same_type:
            yield _finite(p, read_raw(p.source, start, stop), ggml_type, None)
        else:
            w = _source_rows(p, start, stop)
            out = _finite(p, encode(w, ggml_type), ggml_type, w)
            del w  # not held across the yield: one float32 chunk in memory at a time
            yield out


def _source_rows(p: PlannedTensor, start: int, stop: int) -> np.ndarray:
    """Rows of the source as float32, with a LoRA delta added (before any HF -> GGUF transform)."""
    w = read_rows(p.source, start, stop)
    if p.delta is not None:
        w += p.delta(start, stop)
    return w


# Float types -> (unsigned, signed) views and the exponent mask: all-ones exponent bits = Inf or NaN.
_FLOAT_BITS = {
    Q.F32: (np.uint32, np.int32, 0x7F800000),
    Q.F16: (np.uint16, np.int16, 0x7C00),
    Q.BF16: (np.uint16, np.int16, 0x7F80),
}


def all_finite(stored: np.ndarray, ggml_type: Q) -> bool:
    """No Inf or NaN in F32/F16/BF16 data as stored (any array over the same bytes).

    Two integer maxima instead of np.isfinite: the signed maximum catches +Inf/NaN, the unsigned one
    -Inf/NaN (sign bit set and exponent all ones); both are vectorised integer reductions.
    """
    unsigned, signed, exp = _FLOAT_BITS[ggml_type]
    bits = np.ascontiguousarray(stored).view(unsigned)
    if not bits.size:
        return True
    sign = 1 << (8 * bits.itemsize - 1)
    return int(bits.view(signed).max()) < exp and int(bits.max()) < sign | exp


def _finite(p: PlannedTensor, out: np.ndarray, ggml_type: Q, w: np.ndarray | None) -> np.ndarray:
    """`out` unchanged, or CheckpointError naming the tensor when it holds or would write Inf/NaN.

    `w` is the float32 data `out` was encoded from (None for a byte copy, where `out` is the source).
    """
    stored = ggml_type in _FLOAT_BITS
    if all_finite(out if stored else w, ggml_type if stored else Q.F32):
        return out
    where = f"{p.source.path}: tensor {p.hf_name!r}"
    source = w if p.transform is keep else read_tensor(p.source)  # transformed tensors are small
    if source is None or not np.isfinite(source).all():
        raise CheckpointError(
            f"{where} holds NaN or Inf values; the checkpoint is damaged (re-export or re-download it)"
        )
    if ggml_type == Q.F16 and np.isfinite(w).all():
        raise CheckpointError(
            f"{where} has values up to {float(np.abs(w).max()):.4g} in magnitude, beyond "
            "F16's 65504: they would become Inf; use --outtype bf16 (or f32)"
        )
    raise CheckpointError(f"{where} becomes NaN or Inf as {p.gguf_name} ({ggml_type.name}): a value is out of range")


def encode(w: np.ndarray, ggml_type: Q) -> np.ndarray:
    """float32 -> the stored form of a GGML type, with ggml's own kernels (llama.cpp's rounding)."""
    if ggml_type == Q.F32:
        return w.astype(np.float32, copy=False)
    if ggml_type == Q.F16:
        return f32_to_f16(w)
    if ggml_type == Q.BF16:
        return f32_to_bf16(w)
    return quantize_rows(w, ggml_type)
