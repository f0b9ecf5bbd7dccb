"""Weight transforms HF -> llama.cpp qwen35: small pure functions on float32 numpy arrays.

Each docstring names the HF and llama.cpp code that makes the transform necessary.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..tensor_plan import Transform, keep


def add_one(w: np.ndarray) -> np.ndarray:
    """HF Qwen3_5RMSNorm computes x_hat * (1 + w); llama.cpp's RMS norm multiplies by the weight."""
    return w + np.float32(1.0)


def neg_exp(w: np.ndarray) -> np.ndarray:
    """HF stores A_log and uses A = -exp(A_log); llama.cpp's ssm_a holds A itself."""
    with np.errstate(over="ignore"):  # an overflow to -inf is refused by name when the tensor is written
        return -np.exp(w)


def squeeze_conv1d(w: np.ndarray) -> np.ndarray:
    """HF depthwise Conv1d weight [C, 1, K] -> llama.cpp ssm_conv1d [C, K]."""
    assert w.ndim == 3 and w.shape[1] == 1, w.shape
    return w[:, 0, :]


def tile_v_heads(
    w: np.ndarray, *, n_k_heads: int, n_v_heads: int, head_dim: int, axis: int = 0, start: int = 0
) -> np.ndarray:
    """Reorder value heads from HF's grouped order to llama.cpp's tiled order.

    HF repeat_interleaves key heads, so value head k*r + s (r = n_v/n_k) reads key head k; ggml
    broadcasts, so value head s*n_k + k reads key head k. The n_v*head_dim entries of `axis` from
    `start` are the value heads; everything else is untouched.
    """
    r = n_v_heads // n_k_heads
    if r == 1:
        return w
    w = np.moveaxis(w, axis, 0)
    v = w[start : start + n_v_heads * head_dim]
    assert v.shape[0] == n_v_heads * head_dim, (w.shape, start, n_v_heads, head_dim)
    tiled = v.reshape(n_k_heads, r, head_dim, *v.shape[1:]).swapaxes(0, 1).reshape(v.shape)
    out = np.concatenate([w[:start], tiled, w[start + v.shape[0] :]], axis=0)
    return np.moveaxis(out, 0, axis)


def chain(*steps: Transform) -> Transform:
    """Apply steps left to right; `keep` steps are dropped so chain(keep) is keep."""
    steps = tuple(s for s in steps if s is not keep)
    if not steps:
        return keep
    if len(steps) == 1:
        return steps[0]

    def run(w: np.ndarray) -> np.ndarray:
        for step in steps:
            w = step(w)
        return w

    run.__name__ = " -> ".join(
        getattr(s, "__name__", getattr(getattr(s, "func", None), "__name__", "?")) for s in steps
    )
    return run


def v_head_reorders(n_k_heads: int, n_v_heads: int, head_dim: int, k_dim: int) -> dict[str, Transform]:
    """The tile_v_heads variant for each linear-attention tensor; all `keep` when n_v == n_k."""
    if n_v_heads == n_k_heads:
        return dict.fromkeys(("qkv", "rows", "heads", "conv", "cols"), keep)
    tile = partial(tile_v_heads, n_k_heads=n_k_heads, n_v_heads=n_v_heads)
    return {
        "qkv": partial(tile, head_dim=head_dim, start=2 * k_dim),  # in_proj_qkv rows [q | k | v]
        "rows": partial(tile, head_dim=head_dim),  # in_proj_z rows
        "heads": partial(tile, head_dim=1),  # in_proj_a/b rows, A_log, dt_bias
        "conv": partial(tile, head_dim=head_dim, start=2 * k_dim),  # conv1d channels [q | k | v]
        "cols": partial(tile, head_dim=head_dim, axis=1),  # out_proj columns
    }
