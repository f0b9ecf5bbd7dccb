"""ggml's conversion kernels, checked by value against independent numpy implementations."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from minicpmv_gguf.native.ggml import bf16_to_f32, f32_to_bf16, f32_to_f16, quantize_rows

# Normal values, f16 subnormals, overflow past f16's range, signed zeros and a NaN.
X = (
    np.concatenate(
        [np.random.default_rng(0).normal(0, 0.02, 4000), [1e-6, -3e-8, 7e4, -1e5, 0.0, -0.0, np.nan], np.zeros(89)]
    )
    .astype(np.float32)
    .reshape(-1, 64)
)


def test_f16_matches_numpy_bit_for_bit():
    with np.errstate(over="ignore"):  # 7e4 and -1e5 overflow to inf in both
        expected = X.astype(np.float16)
    np.testing.assert_array_equal(f32_to_f16(X).view(np.uint16), expected.view(np.uint16))


def test_bf16_matches_gguf_py_and_round_trips():
    np.testing.assert_array_equal(f32_to_bf16(X).view(np.uint8).ravel(), quants.quantize(X, Q.BF16).ravel())
    finite = X[np.isfinite(X)]
    back = bf16_to_f32(f32_to_bf16(finite))
    np.testing.assert_array_equal(f32_to_bf16(back), f32_to_bf16(finite))  # bf16 values are fixed points
    assert np.max(np.abs(back - finite) / np.maximum(np.abs(finite), 1e-30)) <= 2**-8


def test_q8_0_matches_gguf_py_reference():
    x = np.nan_to_num(X)
    np.testing.assert_array_equal(quantize_rows(x, Q.Q8_0), quants.quantize(x, Q.Q8_0).ravel())
