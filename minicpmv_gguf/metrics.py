"""Logit and embedding metrics shared by `eval` (quantize/evaluate.py) and `verify` (verify/checks.py).

Every sum is taken in float64, whatever the input dtype. Variances are centred: a batch's own
moments come from two passes and batches are merged with Chan et al.'s pairwise update, never from
E[x^2] - E[x]^2, which cancels catastrophically when the mean is large against the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities over the last axis; the row maximum is taken out first so exp cannot overflow."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))


def kl_from_log_probs(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in nats, from log-probabilities over the last axis."""
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def kl_divergence(test: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KL(ref || test) per position, in nats, of the softmax of two [T, vocab] logit arrays."""
    return kl_from_log_probs(log_softmax(ref), log_softmax(test))


def target_nll(log_probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row of [T, vocab] log-probabilities: the pieces of a perplexity."""
    return -log_probs[np.arange(len(targets)), np.asarray(targets)]


def perplexity(nll_sum: float, n: int) -> float:
    """exp of the mean negative log-likelihood of `n` scored tokens."""
    return math.exp(nll_sum / n)


def top1_matches(test: np.ndarray, ref: np.ndarray) -> int:
    """How many positions (rows) have the same argmax in both."""
    return int(np.sum(np.argmax(test, axis=-1) == np.argmax(ref, axis=-1)))


def top1_agreement(test: np.ndarray, ref: np.ndarray) -> float:
    """The share of positions whose argmax agrees."""
    return top1_matches(test, ref) / math.prod(np.shape(ref)[:-1])


def cosine_rows(test: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (token) of `test` with the same row of `ref`."""
    t, r = np.asarray(test, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return (t * r).sum(-1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(r, axis=-1))


def squared_error(test: np.ndarray, ref: np.ndarray) -> float:
    """sum((test - ref)^2) over every element."""
    return float(np.sum((np.asarray(test, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2))


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred sum of squares (M2) of the elements seen so far."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def var(self) -> float:
        """The population variance, as np.var gives it (nan for no elements)."""
        return self.m2 / self.n if self.n else math.nan


def moments(x: np.ndarray) -> Moments:
    """The moments of every element of `x`, two-pass: the mean first, then squares about it."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.size == 0:
        return Moments()
    mean = float(x64.mean())
    return Moments(x64.size, mean, float(np.sum((x64 - mean) ** 2)))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of two disjoint sets from theirs (Chan et al.): exact up to rounding, order-free."""
    if not a.n or not b.n:
        return b if a.n == 0 else a
    n = a.n + b.n
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * b.n / n, a.m2 + b.m2 + delta * delta * a.n * b.n / n)


@dataclass(frozen=True)
class NmseSums:
    """A streamed NMSE: squared error and the reference's moments, batch by batch."""

    sq_err: float = 0.0
    ref: Moments = Moments()

    def add(self, test: np.ndarray, ref: np.ndarray) -> NmseSums:
        return NmseSums(self.sq_err + squared_error(test, ref), merge_moments(self.ref, moments(ref)))

    @property
    def value(self) -> float:
        """mean((test - ref)^2) / var(ref); a constant reference gives inf (nan when equal), as numpy would."""
        if self.ref.n == 0:
            return math.nan
        mse, var = self.sq_err / self.ref.n, self.ref.var
        if var == 0:
            return math.inf if mse > 0 else math.nan
        return mse / var


def nmse(test: np.ndarray, ref: np.ndarray) -> float:
    """mean((test - ref)^2) / var(ref): llama.cpp's examples/model-conversion check-nmse definition."""
    return NmseSums().add(test, ref).value
