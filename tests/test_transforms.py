"""Transforms tested by value: each changes weights the way the HF and llama.cpp code require."""

from __future__ import annotations

import numpy as np
import pytest

from minicpmv_gguf.convert_hf_to_gguf.transforms import (
    add_one,
    chain,
    neg_exp,
    squeeze_conv1d,
    tile_v_heads,
    v_head_reorders,
)
from minicpmv_gguf.tensor_plan import keep


def test_add_one_shifts_rmsnorm_weights():
    # HF computes x_hat * (1 + w): a zero-initialised norm must become a unit scale.
    w = np.array([0.0, -0.5, 0.25], np.float32)
    np.testing.assert_array_equal(add_one(w), [1.0, 0.5, 1.25])
    assert add_one(w).dtype == np.float32


def test_neg_exp_turns_a_log_into_a():
    a_log = np.log(np.array([0.05, 1.0, 2.0], np.float32))
    np.testing.assert_allclose(neg_exp(a_log), [-0.05, -1.0, -2.0], rtol=1e-6)


def test_squeeze_conv1d_drops_the_singleton_axis():
    w = np.arange(24, dtype=np.float32).reshape(6, 1, 4)
    out = squeeze_conv1d(w)
    assert out.shape == (6, 4)
    np.testing.assert_array_equal(out[5], [20, 21, 22, 23])


def test_squeeze_conv1d_refuses_a_non_depthwise_shape():
    with pytest.raises(AssertionError):
        squeeze_conv1d(np.zeros((6, 2, 4), np.float32))


def test_tile_v_heads_grouped_to_tiled_order():
    # 2 key heads, 4 value heads of dim 1: HF order v0 v1 (k0) v2 v3 (k1) -> ggml order v0 v2 v1 v3.
    w = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(tile_v_heads(w, n_k_heads=2, n_v_heads=4, head_dim=1), [0, 2, 1, 3])


def test_tile_v_heads_keeps_head_rows_together_and_leaves_qk_rows():
    # rows: [q(2) | k(2) | v heads 0..3 of dim 2]; only the v block moves, whole heads at a time.
    w = np.arange(12, dtype=np.float32)[:, None].repeat(3, axis=1)
    out = tile_v_heads(w, n_k_heads=2, n_v_heads=4, head_dim=2, start=4)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 4, 5, 8, 9, 6, 7, 10, 11])


def test_tile_v_heads_on_columns():
    w = np.arange(4, dtype=np.float32)[None, :].repeat(2, axis=0)
    out = tile_v_heads(w, n_k_heads=2, n_v_heads=4, head_dim=1, axis=1)
    np.testing.assert_array_equal(out, [[0, 2, 1, 3], [0, 2, 1, 3]])


def test_tile_v_heads_is_identity_when_heads_are_equal():
    w = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    assert tile_v_heads(w, n_k_heads=4, n_v_heads=4, head_dim=2) is w


def test_v_head_reorders_are_keep_for_equal_heads():
    # The released model has 16/16 heads: every tensor must stream unchanged.
    assert set(v_head_reorders(16, 16, 128, 2048).values()) == {keep}


def test_tiled_order_matches_hf_repeat_interleave_pairing():
    # HF pairs value head j with key head j // r; after tiling, ggml pairs position p with key head p % n_k.
    n_k, n_v = 3, 6
    hf_value_heads = np.arange(n_v, dtype=np.float32)
    tiled = tile_v_heads(hf_value_heads, n_k_heads=n_k, n_v_heads=n_v, head_dim=1)
    for p, hf_j in enumerate(tiled.astype(int)):
        assert hf_j // (n_v // n_k) == p % n_k


def test_chain_applies_in_order_and_drops_keep():
    assert chain(keep, keep) is keep
    assert chain(keep, add_one) is add_one
    w = np.array([0.0], np.float32)
    np.testing.assert_allclose(chain(neg_exp, add_one)(w), [0.0])  # -exp(0) + 1
