"""A GGUF's tensor set against the one its loader builds: names, shapes (torch order) and ggml types.

llama.cpp's loader checks names and shapes itself; libmtmd's does not, and a missing or misshapen
mmproj weight crashes the process in its graph (a NULL tensor or a GGML_ASSERT). The expected sets
come from the converters' own tables (`Rule`), evaluated on the file's hyperparameters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from .gguf_io import TensorInfo
from .tensor_plan import Rule

# Types ggml's CPU backend multiplies (or gathers rows of) as weights; integer and F64 tensors it cannot.
MATMUL_TYPES = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
    | {Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.IQ4_NL, Q.IQ4_XS}
)
# A rule's dtype -> the types its tensor may have: norms, biases and tables read as F32, conv kernels F16/F32.
ROLE_TYPES = {"f32": frozenset({Q.F32}), "f16|f32": frozenset({Q.F16, Q.F32}), "outtype": MATMUL_TYPES}


@dataclass(frozen=True)
class Expected:
    """One tensor the loader needs: its torch-order shape, the types it may have, and whether it may be absent."""

    shape: tuple[int, ...]
    types: frozenset[Q]
    optional: bool = False


def expected_from_rules(rules: Iterable[Rule], c: object, kinds: tuple[str, ...]) -> dict[str, Expected]:
    """GGUF name -> Expected for a converter table; `kinds[b]` is block b's layer type (as Rule.layers)."""
    expected = {}
    for rule in rules:
        shape = tuple(rule.gguf_shape(c) if rule.gguf_shape else rule.shape(c))
        blocks = [b for b in range(len(kinds)) if rule.layers in ("all", kinds[b])] if "{bid}" in rule.gguf else [0]
        for b in blocks:
            expected[rule.gguf.format(bid=b)] = Expected(shape, ROLE_TYPES[rule.dtype], rule.optional)
    return expected


def tensor_problems(tensors: list[TensorInfo], expected: dict[str, Expected], user: str) -> list[str]:
    """Every way `tensors` differ from `expected`, one short phrase each naming the tensor; [] when none.

    `user` names what would use them ("libmtmd's minicpmv4_6 graph") for unknown tensors.
    """
    problems = [f"{_name(name)}: stored {n} times" for name, n in Counter(t.name for t in tensors).items() if n > 1]
    seen = set()
    for t in tensors:
        if t.name in seen:
            continue
        seen.add(t.name)
        want = expected.get(t.name)
        if want is None:
            problems.append(f"{_name(t.name)}: unknown tensor ({user} has none of that name)")
        elif t.shape != want.shape:
            problems.append(f"{t.name}: shape {_dims(t.shape)}, expected {_dims(want.shape)}")
        elif (problem := _type_problem(t, want)) is not None:
            problems.append(f"{t.name}: {problem}")
    problems += [f"{name}: missing" for name, want in expected.items() if name not in seen and not want.optional]
    return problems


def _type_problem(t: TensorInfo, want: Expected) -> str | None:
    ggml_type = Q[t.ggml_type]
    if ggml_type not in want.types:
        allowed = "/".join(sorted(q.name for q in want.types)) if len(want.types) < 4 else "a float or block type"
        return f"type {t.ggml_type}, expected {allowed}"
    block = GGML_QUANT_SIZES[ggml_type][0]
    if block > 1 and t.shape and t.shape[-1] % block:
        return f"type {t.ggml_type} needs rows of a multiple of {block} values, the rows have {t.shape[-1]}"
    return None


def _name(name: str) -> str:
    """A tensor name as read, quoted when damage put a newline or another control character in it."""
    return name if name.isprintable() else repr(name)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"
