"""`evaluate`: streamed KLD / top-1 / PPL / NMSE equal a direct numpy computation on full logit tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minicpmv_gguf.errors import QuantizeError
from minicpmv_gguf.metrics import nmse
from minicpmv_gguf.quantize.evaluate import evaluate
from minicpmv_gguf.verify.reference import N_THREADS, llama_logits, load_llama
from minicpmv_gguf.verify.texts import long_text
from tests.helpers import run_cli

CTX, BATCH, CHUNKS = 60, 16, 3  # batches of 16, 16, 16, 12 per chunk: a partial batch too


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "text.txt"
    path.write_text(long_text(3000, seed=7), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(tiny_ckpt, convert_cached):
    """(model, ref): the F16 GGUF against the F32 one of one checkpoint."""
    return convert_cached(tiny_ckpt, "f16"), convert_cached(tiny_ckpt, "f32")


def full_logits(path, chunks: list[list[int]]) -> list[np.ndarray]:
    # Same llama.cpp settings as evaluate: flash attention on (llama.cpp's auto picks it on CPU) and
    # BATCH tokens per decode (llm.eval splits by n_batch); then the logits are bit-identical.
    llm = load_llama(path, n_ctx=CTX, flash_attn=True)
    llm.n_batch = BATCH
    return [llama_logits(llm, chunk) for chunk in chunks]


def direct(model, ref, text) -> dict:
    """The statistics from full [T, vocab] tables, positions 0..CTX-2 of every chunk."""
    llm = load_llama(ref, n_ctx=CTX)
    ids = llm.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=False, special=False)
    chunks = [ids[i * CTX : (i + 1) * CTX] for i in range(CHUNKS)]
    r = np.concatenate([x[:-1] for x in full_logits(ref, chunks)]).astype(np.float64)
    m = np.concatenate([x[:-1] for x in full_logits(model, chunks)]).astype(np.float64)
    targets = np.concatenate([c[1:] for c in chunks])
    lr = r - np.log(np.exp(r - r.max(1, keepdims=True)).sum(1, keepdims=True)) - r.max(1, keepdims=True)
    lm = m - np.log(np.exp(m - m.max(1, keepdims=True)).sum(1, keepdims=True)) - m.max(1, keepdims=True)
    kld = np.sum(np.exp(lr) * (lr - lm), axis=1)
    rows = np.arange(len(targets))
    return {
        "n_scored": len(targets),
        "kld_mean": kld.mean(),
        "kld_p99": np.percentile(kld, 99),
        "kld_max": kld.max(),
        "top1": np.mean(r.argmax(1) == m.argmax(1)),
        "ppl_ref": np.exp(-lr[rows, targets].mean()),
        "ppl_model": np.exp(-lm[rows, targets].mean()),
        "nmse": nmse(m, r),
    }


def test_streamed_equals_direct(pair, text):
    model, ref = pair
    got = evaluate(model, ref, text, ctx=CTX, batch=BATCH, max_chunks=CHUNKS, threads=N_THREADS).as_dict()
    want = direct(model, ref, text)
    print({k: (got[k], v) for k, v in want.items()})
    # Measured: equal to 1e-15 relative (float64 summation order only).
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=0), key
    assert got["n_chunks"] == CHUNKS and got["kld_mean"] > 0 and got["top1"] < 1  # f16 is not lossless


def test_identical_files_agree_exactly(pair, text):
    ref = pair[1]
    result = evaluate(ref, ref, text, ctx=CTX, batch=BATCH, max_chunks=2, threads=N_THREADS)
    assert (result.kld_mean, result.kld_p99, result.kld_max, result.top1, result.nmse) == (0, 0, 0, 1, 0)
    assert result.ppl_ratio == 1 and result.n_scored == 2 * (CTX - 1)


def test_different_tokenizer_is_refused(pair, text, tmp_path):
    # Same weights, one token text changed in place ("<think>" -> "<thunk>"): still a valid GGUF.
    other = tmp_path / "other.gguf"
    data = pair[1].read_bytes()
    assert b"<think>" in data
    other.write_bytes(data.replace(b"<think>", b"<thunk>"))
    with pytest.raises(QuantizeError, match="different tokenizers"):
        evaluate(other, pair[1], text, ctx=CTX, threads=N_THREADS)


def test_refusals(pair, text, tmp_path):
    model, ref = pair
    with pytest.raises(QuantizeError, match="fewer than one chunk of 100000"):
        evaluate(model, ref, text, ctx=100_000)
    with pytest.raises(QuantizeError, match="file not found"):
        evaluate(tmp_path / "missing.gguf", ref, text)
    with pytest.raises(QuantizeError, match="llama.cpp cannot load it"):
        evaluate(text, ref, text)


def test_cli_eval(pair, text):
    model, ref = pair
    r = run_cli("eval", model, "--ref", ref, "--text", text, "--ctx", CTX, "--chunks", 2, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["n_scored"] == 2 * (CTX - 1) and 0 < result["kld_mean"] < 1e-3 and result["top1"] > 0.95
    assert "eval: chunk 2/2" in r.stderr
    r = run_cli("eval", model, "--ref", ref, "--text", text, "--ctx", CTX, "--chunks", 1)
    assert r.returncode == 0 and "KLD mean" in r.stdout and "top-1 agreement" in r.stdout
