"""llama.cpp's quantizer (`llama_model_quantize`): one GGUF file to another, its log as one-line errors."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import QuantizeError
from .lib import llama_cpp
from .log import capture_log, failure_reason


def quantize_model(
    src: Path,
    dst: Path,
    *,
    ftype: int,
    overrides: dict[str, int],
    imatrix: dict[str, np.ndarray] | None,
    threads: int,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Write `src` quantized to llama_ftype `ftype` at `dst`.

    Args:
        overrides: {tensor-name regex: ggml type id}, llama-quantize's --tensor-type.
        imatrix: {weight name: importance per input column}, as `quantize.load_imatrix` gives it.
        on_line: sees each line llama.cpp logs meanwhile (one per tensor as it is written).
    Raises:
        QuantizeError: llama.cpp's quantizer failed; the message is the first failure it logged.
    """
    L = llama_cpp()
    params = L.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, threads
    keep_alive = []  # ctypes arrays must outlive the call
    if overrides:
        arr = (L.llama_model_tensor_override * (len(overrides) + 1))()  # the zeroed last entry ends the list
        for i, (pattern, ggml_type) in enumerate(overrides.items()):
            arr[i].pattern, arr[i].type = pattern.encode(), ggml_type
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(L.llama_model_tensor_override))
        keep_alive.append(arr)
    if imatrix:
        arr = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive.append(values)
            arr[i].name = name.encode()
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))
        keep_alive.append(arr)
    with capture_log(on_line) as lines:
        rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise QuantizeError(f"{src}: llama.cpp's quantizer failed: {failure_reason(lines)}")
