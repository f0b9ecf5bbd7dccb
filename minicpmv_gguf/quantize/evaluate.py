"""evaluate: what a quantized LM GGUF loses against its reference, measured in llama.cpp and streamed.

Both GGUFs run in llama.cpp (llama-cpp-python's low-level API) on the same token chunks. Each batch of
logits is reduced to per-token statistics and dropped: memory is O(batch x vocab), never O(text x vocab).
`LlamaSession` and `read_chunks` are shared with `imatrix`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import QuantizeError
from ..gguf_io import check_gguf_complete
from ..llama_log import captured_llama_log
from ..metrics import NmseSums, kl_from_log_probs, log_softmax, perplexity, target_nll, top1_matches

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
_ROWS = 8  # logit rows reduced at a time: 8 x 248k x float64 = 16 MB per temporary
_MAX_UBATCH = 512  # llama.cpp's default physical batch; a larger one can abort in ggml_init


class LlamaSession:
    """One GGUF in llama.cpp on the CPU: a context of `n_ctx` tokens fed `n_batch` tokens at a time."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_batch: int,
        threads: int | None,
        log: list[str],
        cb_eval: Callable | None = None,
    ) -> None:
        import llama_cpp

        self.path, self.log, self.model, self.ctx, self.batch = Path(path), log, None, None, None
        if not self.path.is_file():
            raise QuantizeError(f"{path}: file not found")
        with open(self.path, "rb") as f:
            if f.read(4) == b"GGUF":  # a truncated GGUF: one clear line before llama.cpp sees it
                check_gguf_complete(self.path)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise QuantizeError(f"{path}: llama.cpp cannot load it: {_first_error(log)}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_seq_max = n_ctx, n_batch, 1
        cparams.n_ubatch = min(n_batch, _MAX_UBATCH)
        cparams.n_threads = cparams.n_threads_batch = threads or os.cpu_count() or 1
        cparams.no_perf = True
        if cb_eval is not None:
            self._cb_eval = llama_cpp.ggml_backend_sched_eval_callback(cb_eval)  # must outlive the context
            cparams.cb_eval = self._cb_eval
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise QuantizeError(f"{path}: llama.cpp cannot make a context: {_first_error(log)}")
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import llama_cpp

        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.model, self.ctx, self.batch = None, None, None

    def tokenize(self, text: str) -> list[int]:
        """Token ids as llama.cpp's tokenizer gives them: no BOS, special-token text read as plain text."""
        import llama_cpp

        data = text.encode("utf-8")
        ids = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, len(ids), False, False)
        if n < 0:
            raise QuantizeError(f"{self.path}: llama.cpp could not tokenize the text")
        return list(ids[:n])

    def token_texts(self) -> list[bytes]:
        import llama_cpp

        return [llama_cpp.llama_vocab_get_text(self.vocab, i) for i in range(self.n_vocab)]

    def bos(self) -> int | None:
        """The token llama.cpp puts first in every chunk, if this vocabulary adds one."""
        import llama_cpp

        return llama_cpp.llama_vocab_bos(self.vocab) if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None

    def reset(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int], pos0: int, *, all_logits: bool) -> None:
        """Run `tokens` at positions pos0, pos0+1, ...; logits kept for every token, or for the last only."""
        import llama_cpp

        b = self.batch
        for i, tok in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos0 + i, 1, all_logits
            b.seq_id[i][0] = 0
        b.logits[len(tokens) - 1] = True
        b.n_tokens, n_log = len(tokens), len(self.log)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise QuantizeError(f"{self.path}: llama.cpp's decode failed (code {rc}): {_first_error(self.log[n_log:])}")

    def logits(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, vocab]: a copy of the logits of batch tokens start..stop-1."""
        import llama_cpp

        rows = [
            np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
            for i in range(start, stop)
        ]
        return np.stack(rows)


def _first_error(log: list[str]) -> str:
    """The first problem llama.cpp logged (later lines only repeat that loading failed), minus `func: `."""
    lines = [line.strip() for line in log if line.strip()]
    errors = [line for line in lines if re.search(r"error|invalid|fail", line, re.IGNORECASE)]
    line = (errors or lines[-1:] or ["no message"])[0]
    return re.sub(r"^\w+: (error loading model: )?", "", line)


def read_chunks(session: LlamaSession, text: Path, ctx: int, max_chunks: int | None) -> list[list[int]]:
    """The text as whole chunks of `ctx` tokens (a shorter tail is dropped), as llama.cpp's tools cut it."""
    try:
        ids = session.tokenize(Path(text).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise QuantizeError(f"{text}: cannot read the text ({err})") from err
    n = len(ids) // ctx if max_chunks is None else min(len(ids) // ctx, max_chunks)
    if n < 1:
        raise QuantizeError(
            f"{text}: {len(ids)} tokens, fewer than one chunk of {ctx}; give more text or a smaller --ctx"
        )
    chunks = [ids[i * ctx : (i + 1) * ctx] for i in range(n)]
    bos = session.bos()
    if bos is not None:  # llama-perplexity and llama-imatrix put BOS first in every chunk
        for chunk in chunks:
            chunk[0] = bos
    return chunks


def check_sizes(ctx: int, batch: int, max_chunks: int | None) -> None:
    """Refuse sizes no run can use, before any model is loaded."""
    if ctx < 2 or batch < 1 or (max_chunks is not None and max_chunks < 1):
        raise QuantizeError(
            f"need ctx >= 2, batch >= 1 and chunks >= 1 (got ctx={ctx}, batch={batch}, chunks={max_chunks})"
        )


@dataclass(frozen=True)
class EvalResult:
    """KL(ref || model) over scored tokens (mean, 99th percentile, max), top-1 agreement, both perplexities
    (ppl_ratio = ppl_model / ppl_ref) and the NMSE of the logits."""

    model: str
    ref: str
    ctx: int
    n_chunks: int
    n_scored: int
    kld_mean: float
    kld_p99: float
    kld_max: float
    top1: float
    ppl_model: float
    ppl_ref: float
    nmse: float
    seconds: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_model / self.ppl_ref

    def as_dict(self) -> dict:
        return {**asdict(self), "ppl_ratio": self.ppl_ratio}

    def table(self) -> str:
        rows = [
            ("model", self.model),
            ("reference", self.ref),
            ("scored tokens", f"{self.n_scored} ({self.n_chunks} chunks of {self.ctx})"),
            ("KLD mean", f"{self.kld_mean:.6f}"),
            ("KLD 99th pct", f"{self.kld_p99:.6f}"),
            ("KLD max", f"{self.kld_max:.6f}"),
            ("top-1 agreement", f"{100 * self.top1:.2f} %"),
            ("PPL model", f"{self.ppl_model:.4f}"),
            ("PPL reference", f"{self.ppl_ref:.4f}"),
            ("PPL ratio", f"{self.ppl_ratio:.5f}"),
            ("logit NMSE", f"{self.nmse:.3e}"),
            ("time", f"{self.seconds:.1f} s"),
        ]
        return "\n".join(f"{k:<16} {v}" for k, v in rows)


def evaluate(
    model: Path,
    ref: Path,
    text: Path,
    *,
    ctx: int = 512,
    batch: int = 64,
    max_chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Compare `model` with `ref` (same tokenizer) on `text`, token by token, in llama.cpp.

    The text is cut into chunks of `ctx` tokens, memory reset before each. In every chunk the logits at
    positions 0 .. ctx-2 are scored, each against the next token of the chunk: every position after the
    first is predicted once (llama-perplexity scores only the second half; here the whole chunk counts).
    Per scored position: KL(ref || model) over the full vocabulary, whether the argmaxes agree, and both
    models' negative log-likelihood of the next token; NMSE is mean((model - ref)^2) / var(ref) over all
    scored logits. Each model decodes `batch` tokens at a time with logits for all of them; the batch is
    reduced and dropped, so memory stays O(batch x vocab).

    Raises:
        QuantizeError: unreadable file or text, different tokenizers, text shorter than one chunk.
    """
    check_sizes(ctx, batch, max_chunks)
    batch = min(batch, ctx)  # llama.cpp reserves logits for n_batch tokens
    t0 = time.perf_counter()
    with (
        captured_llama_log() as log,
        LlamaSession(ref, n_ctx=ctx, n_batch=batch, threads=threads, log=log) as r,
        LlamaSession(model, n_ctx=ctx, n_batch=batch, threads=threads, log=log) as m,
    ):
        _check_same_tokenizer(r, m)
        chunks = read_chunks(r, text, ctx, max_chunks)
        if chunks != read_chunks(m, text, ctx, max_chunks):
            raise QuantizeError(f"{model} and {ref} tokenize the text differently; compare files of one model")
        stats = _Stats()
        for k, chunk in enumerate(chunks):
            r.reset()
            m.reset()
            for start in range(0, ctx, batch):
                piece = chunk[start : start + batch]
                r.decode(piece, start, all_logits=True)
                m.decode(piece, start, all_logits=True)
                n_scored = min(len(piece), ctx - 1 - start)  # the chunk's last position has no next token
                for g in range(0, n_scored, _ROWS):
                    h = min(g + _ROWS, n_scored)
                    stats.add(r.logits(g, h), m.logits(g, h), np.asarray(chunk[start + g + 1 : start + h + 1]))
            if progress:
                progress(k + 1, len(chunks))
    return stats.result(model, ref, ctx, len(chunks), time.perf_counter() - t0)


def _check_same_tokenizer(r: LlamaSession, m: LlamaSession) -> None:
    if r.n_vocab != m.n_vocab:
        raise QuantizeError(f"{m.path} has {m.n_vocab} tokens and {r.path} has {r.n_vocab}; compare files of one model")
    diff = next((i for i, (a, b) in enumerate(zip(r.token_texts(), m.token_texts())) if a != b), None)
    if diff is not None:
        raise QuantizeError(
            f"{m.path} and {r.path} have different tokenizers (token {diff} differs); compare files of one model"
        )


class _Stats:
    """Running sums over scored positions; per-token KLD is kept (n_tokens floats) for its percentiles."""

    def __init__(self) -> None:
        self.kld: list[np.ndarray] = []
        self.same_top = self.n = 0
        self.nll_ref = self.nll_model = 0.0
        self.nmse = NmseSums()

    def add(self, ref: np.ndarray, model: np.ndarray, targets: np.ndarray) -> None:
        ref64, model64 = ref.astype(np.float64), model.astype(np.float64)  # cast once: the metrics reuse them
        lr, lm = log_softmax(ref64), log_softmax(model64)
        self.kld.append(kl_from_log_probs(lr, lm))
        self.same_top += top1_matches(model, ref)
        self.nll_ref += float(target_nll(lr, targets).sum())
        self.nll_model += float(target_nll(lm, targets).sum())
        self.nmse = self.nmse.add(model64, ref64)
        self.n += len(targets)

    def result(self, model: Path, ref: Path, ctx: int, n_chunks: int, seconds: float) -> EvalResult:
        kld = np.concatenate(self.kld)
        return EvalResult(
            str(model),
            str(ref),
            ctx,
            n_chunks,
            self.n,
            float(kld.mean()),
            float(np.percentile(kld, 99)),
            float(kld.max()),
            self.same_top / self.n,
            perplexity(self.nll_model, self.n),
            perplexity(self.nll_ref, self.n),
            self.nmse.value,
            seconds,
        )
