"""minicpmv_gguf.metrics by value: small hand-computed cases, and the variance where E[x^2] - E[x]^2 fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicpmv_gguf.metrics import (
    Moments,
    NmseSums,
    cosine_rows,
    kl_divergence,
    log_softmax,
    merge_moments,
    moments,
    nmse,
    perplexity,
    target_nll,
    top1_agreement,
    top1_matches,
)


def test_log_softmax_is_exact_and_does_not_overflow():
    assert log_softmax(np.array([[1.0, 1.0]]))[0] == pytest.approx([-math.log(2), -math.log(2)])
    big = log_softmax(np.array([[1000.0, 1001.0]], dtype=np.float32))  # exp(1000) overflows float64
    e = math.e
    assert big.dtype == np.float64 and big[0] == pytest.approx([-math.log(1 + e), math.log(e / (1 + e))])


def test_kl_divergence_of_two_known_distributions():
    ref, test = np.log([[0.5, 0.5], [0.2, 0.8]]), np.log([[0.9, 0.1], [0.2, 0.8]])
    # KL(ref || test) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = ln(5/3); identical rows: 0.
    assert kl_divergence(test, ref) == pytest.approx([math.log(5 / 3), 0.0], abs=1e-15)
    assert kl_divergence(test + 7.0, ref - 3.0) == pytest.approx(kl_divergence(test, ref), abs=1e-15)  # shift-free


def test_target_nll_and_perplexity():
    log_probs = np.log([[0.25, 0.75], [0.5, 0.5]])
    nll = target_nll(log_probs, np.array([1, 0]))
    assert nll == pytest.approx([-math.log(0.75), math.log(2)])
    assert perplexity(2 * math.log(2), 2) == pytest.approx(2.0)
    assert perplexity(float(nll.sum()), 2) == pytest.approx(math.sqrt(2 / 0.75))


def test_top1_counts_rows_with_the_same_argmax():
    test = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 2.0]])
    ref = np.array([[0.0, 5.0], [0.0, 5.0], [9.0, 1.0]])
    assert top1_matches(test, ref) == 2 and top1_agreement(test, ref) == pytest.approx(2 / 3)
    assert top1_agreement(test[0], ref[0]) == 1.0  # one position: a single logit row


def test_cosine_rows():
    got = cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]]))
    assert got == pytest.approx([0.0, 1.0, -1.0])


def test_nmse_by_value():
    ref = np.array([[0.0, 2.0]])  # var 1
    assert nmse(ref + 1.0, ref) == pytest.approx(1.0)
    assert nmse(ref, ref) == 0.0
    assert nmse(np.ones(3), np.zeros(3)) == math.inf and math.isnan(nmse(np.zeros(3), np.zeros(3)))


def test_moments_and_their_merge_equal_numpy():
    x = np.arange(10.0) ** 2
    whole = moments(x)
    assert (whole.n, whole.mean) == (10, pytest.approx(x.mean())) and whole.var == pytest.approx(np.var(x))
    merged = merge_moments(moments(x[:3]), moments(x[3:]))
    assert merged.mean == pytest.approx(x.mean()) and merged.var == pytest.approx(np.var(x), rel=1e-15)
    assert merge_moments(Moments(), whole) == whole and merge_moments(whole, moments(x[:0])) == whole
    assert math.isnan(Moments().var)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60), st.integers(1, 59))
def test_any_split_merges_to_the_whole(values, cut):
    x = np.array(values)
    merged = merge_moments(moments(x[:cut]), moments(x[cut:]))
    assert merged.n == len(x) and merged.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-6)
    assert merged.var == pytest.approx(np.var(x), rel=1e-9, abs=1e-6)


# A large mean against a small spread: 1e4 + noise of 1e-2 in float32 (the float32 grid there is 1e-3).
NOISY = (1e4 + np.random.default_rng(0).standard_normal(100_000) * 1e-2).astype(np.float32)


def test_raw_moments_lose_the_variance_of_a_large_mean():
    want = np.var(NOISY.astype(np.float64))
    raw32 = float(np.mean(NOISY * NOISY) - np.mean(NOISY) ** 2)  # float32: x^2 ~ 1e8 swamps the spread
    x64 = NOISY.astype(np.float64)
    raw64 = float(np.sum(x64 * x64) / x64.size - (np.sum(x64) / x64.size) ** 2)  # verify's old formula
    assert abs(raw32 - want) / want > 0.5
    assert abs(raw64 - want) / want > 1e-5


def test_streamed_centred_variance_gets_the_float64_reference():
    want = np.var(NOISY.astype(np.float64))
    streamed = Moments()
    for batch in np.array_split(NOISY.reshape(-1, 100), 37):  # uneven float32 batches, as eval and verify feed
        streamed = merge_moments(streamed, moments(batch))
    assert streamed.n == NOISY.size and streamed.var == pytest.approx(want, rel=1e-12)


def test_streamed_nmse_equals_the_whole_array_nmse():
    ref = NOISY.reshape(-1, 1000)
    test = ref + np.float32(1e-3) * np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    sums = NmseSums()
    for i in range(0, len(ref), 7):
        sums = sums.add(test[i : i + 7], ref[i : i + 7])
    want = np.mean((test.astype(np.float64) - ref) ** 2) / np.var(ref.astype(np.float64))
    assert sums.value == pytest.approx(want, rel=1e-12) and nmse(test, ref) == pytest.approx(want, rel=1e-12)
