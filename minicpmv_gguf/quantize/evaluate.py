"""evaluate: what a quantized LM GGUF loses against its reference, measured in llama.cpp and streamed.

Both GGUFs run in llama.cpp (llama-cpp-python's low-level API) on the same token chunks. Each batch of
logits is reduced to per-token statistics and dropped: memory is O(batch x vocab), never O(text x vocab).
`open_session`, `decode` and `read_chunks` are shared with `imatrix`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, QuantizeError
from ..gguf_io import check_gguf_complete
from ..metrics import NmseSums, kl_from_log_probs, log_softmax, perplexity, target_nll, top1_matches
from ..native import Context, LanguageModel

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
_ROWS = 8  # logit rows reduced at a time: 8 x 248k x float64 = 16 MB per temporary
_MAX_UBATCH = 512  # llama.cpp's default physical batch; a larger one can abort in ggml_init


@contextmanager
def open_session(
    path: Path, *, n_ctx: int, n_batch: int, threads: int | None, cb_eval: Callable | None = None
) -> Iterator[Context]:
    """One GGUF in llama.cpp on the CPU: a context of `n_ctx` tokens fed `n_batch` tokens at a time.

    The context's `lm` is the model; both are freed when the block ends.

    Raises:
        QuantizeError: the file is missing or truncated, or llama.cpp cannot load it or make the context.
    """
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{path}: file not found")
    with open(path, "rb") as f:
        if f.read(4) == b"GGUF":  # a truncated GGUF: one clear line before llama.cpp sees it
            check_gguf_complete(path)
    try:
        lm = LanguageModel.from_file(path)
    except ModelLoadError as err:
        raise QuantizeError(str(err)) from None
    with lm:
        try:
            context = Context(
                lm,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=min(n_batch, _MAX_UBATCH),
                threads=threads or os.cpu_count() or 1,
                cb_eval=cb_eval,
            )
        except ModelLoadError as err:
            raise QuantizeError(str(err)) from None
        with context:
            yield context


def decode(context: Context, tokens: list[int], pos0: int, *, all_logits: bool) -> None:
    """Run `tokens` (one batch) at positions pos0, pos0+1, ...; logits kept for every token, or the last only."""
    try:
        context.decode(tokens, pos0, logits_last=True, logits_all=all_logits)
    except RuntimeError as err:
        raise QuantizeError(f"{context.lm.path}: llama.cpp's decode failed: {err}") from err


def read_chunks(lm: LanguageModel, text: Path, ctx: int, max_chunks: int | None) -> list[list[int]]:
    """The text as whole chunks of `ctx` tokens (a shorter tail is dropped), as llama.cpp's tools cut it.

    Special-token text in it is read as plain text, as llama-perplexity does.
    """
    try:
        ids = lm.tokenize(Path(text).read_text(encoding="utf-8"), special=False)
    except (OSError, UnicodeDecodeError) as err:
        raise QuantizeError(f"{text}: cannot read the text ({err})") from err
    n = len(ids) // ctx if max_chunks is None else min(len(ids) // ctx, max_chunks)
    if n < 1:
        raise QuantizeError(
            f"{text}: {len(ids)} tokens, fewer than one chunk of {ctx}; give more text or a smaller --ctx"
        )
    chunks = [ids[i * ctx : (i + 1) * ctx] for i in range(n)]
    bos = lm.bos()
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
        open_session(ref, n_ctx=ctx, n_batch=batch, threads=threads) as r,
        open_session(model, n_ctx=ctx, n_batch=batch, threads=threads) as m,
    ):
        _check_same_tokenizer(r.lm, m.lm)
        chunks = read_chunks(r.lm, text, ctx, max_chunks)
        if chunks != read_chunks(m.lm, text, ctx, max_chunks):
            raise QuantizeError(f"{model} and {ref} tokenize the text differently; compare files of one model")
        stats = _Stats()
        for k, chunk in enumerate(chunks):
            r.clear()
            m.clear()
            for start in range(0, ctx, batch):
                piece = chunk[start : start + batch]
                decode(r, piece, start, all_logits=True)
                decode(m, piece, start, all_logits=True)
                n_scored = min(len(piece), ctx - 1 - start)  # the chunk's last position has no next token
                for g in range(0, n_scored, _ROWS):
                    h = min(g + _ROWS, n_scored)
                    stats.add(r.logits(g, h), m.logits(g, h), np.asarray(chunk[start + g + 1 : start + h + 1]))
            if progress:
                progress(k + 1, len(chunks))
    return stats.result(model, ref, ctx, len(chunks), time.perf_counter() - t0)


def _check_same_tokenizer(r: LanguageModel, m: LanguageModel) -> None:
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
