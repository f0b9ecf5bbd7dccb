"""ggml's own row kernels (float32 <-> F16/BF16, quantization), from the libraries llama-cpp-python ships.

numpy has no hardware half-precision cast on most x86 CPUs; ggml's SIMD kernels convert far faster and
round exactly as llama.cpp does. The shared libraries come from `lib.ggml_base()` / `lib.ggml_cpu()`,
without importing the llama_cpp Python package.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .lib import ggml_base, ggml_cpu

_c = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64


@cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libggml-base, libggml-cpu) with the kernels' prototypes set and the CPU's SIMD paths chosen."""
    base, cpu = ggml_base(), ggml_cpu()
    for fn in (cpu.ggml_cpu_fp32_to_fp16, cpu.ggml_cpu_fp32_to_bf16, cpu.ggml_cpu_bf16_to_fp32):
        fn.argtypes, fn.restype = _c, None
    base.ggml_quantize_chunk.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    )
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_requires_imatrix.argtypes, base.ggml_quantize_requires_imatrix.restype = (
        (ctypes.c_int,),
        ctypes.c_bool,
    )
    cpu.ggml_cpu_init()  # selects the SIMD paths for this CPU
    return base, cpu


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16, round to nearest even (same bits as numpy's astype)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    _libs()[1].ggml_cpu_fp32_to_fp16(_ptr(x), _ptr(out), x.size)
    return out


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as llama.cpp stores BF16."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.uint16)
    _libs()[1].ggml_cpu_fp32_to_bf16(_ptr(x), _ptr(out), x.size)
    return out


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exact."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, np.float32)
    _libs()[1].ggml_cpu_bf16_to_fp32(_ptr(bits), _ptr(out), bits.size)
    return out


def quantize_rows(x: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """float32 [..., n_per_row] -> the packed bytes of a block type (e.g. Q8_0), row by row."""
    base, _ = _libs()
    assert not base.ggml_quantize_requires_imatrix(int(ggml_type)), ggml_type
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    assert n_per_row % block == 0, (x.shape, ggml_type)
    out = np.empty(x.size // block * type_size, np.uint8)
    written = base.ggml_quantize_chunk(int(ggml_type), _ptr(x), _ptr(out), 0, x.size // n_per_row, n_per_row, None)
    assert written == out.nbytes, (written, out.nbytes)
    return out
