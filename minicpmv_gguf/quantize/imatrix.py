"""compute_imatrix: an importance matrix from calibration text, collected in llama.cpp, no torch.

The LM GGUF runs in llama.cpp through llama-cpp-python. The context's eval callback sees every
MUL_MAT node of the graph; for each one whose weight is a `blk.*` tensor it adds the squares of the
input activations (src1) per input column, and counts the tokens, as llama.cpp's llama-imatrix does
(tools/imatrix/imatrix.cpp). The result is written in llama.cpp's imatrix GGUF format, which
`quantize_lm(imatrix=...)` and llama-quantize both read.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import QuantizeError
from ..gguf_io import KV, TensorOut, check_output, write_gguf
from ..native.lib import ggml_base
from .evaluate import Progress, check_sizes, decode, open_session, read_chunks

# From ggml/include/ggml.h of the llama.cpp that llama-cpp-python 0.3.36 bundles (GGML_MAX_DIMS 4,
# GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64). _check_ggml_abi compares it with the library.
GGML_OP_MUL_MAT = 29
GGML_TYPE_F32 = 0
_GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type, padding[4]


class GgmlTensor(ctypes.Structure):
    """A ctypes mirror of `struct ggml_tensor` (336 bytes on 64-bit platforms)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * 10),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


@dataclass(frozen=True)
class ImatrixResult:
    """What compute_imatrix wrote; `shapes` holds each collected weight's shape as llama.cpp saw it."""

    out: Path
    n_chunks: int
    chunk_size: int
    shapes: dict[str, tuple[int, ...]]
    seconds: float

    def summary(self) -> str:
        return (
            f"wrote {self.out}: importance matrix of {len(self.shapes)} weights from {self.n_chunks} chunks "
            f"of {self.chunk_size} tokens in {self.seconds:.1f} s"
        )


def compute_imatrix(
    lm_gguf: Path,
    text: Path,
    out: Path,
    *,
    ctx: int = 512,
    max_chunks: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImatrixResult:
    """Run `lm_gguf` over `text` in llama.cpp and write its importance matrix (llama.cpp imatrix GGUF).

    The text is tokenized by the model's own tokenizer and cut into chunks of `ctx` tokens; each chunk is
    one decode from an empty memory. For every `blk.*` weight W used in a MUL_MAT, `W.in_sum2` holds the
    sum over all tokens of the squared input activation of each input column, and `W.counts` the number
    of tokens. As in llama-imatrix, `output.weight` (here the tied `token_embd.weight`) is not collected:
    llama.cpp's quantizer never needs an imatrix for it. Only dense matrices: qwen35 has no MoE.

    Raises:
        QuantizeError: unreadable model or text, text shorter than one chunk, an unsupported ggml build.
        OutputError: `out` exists without `overwrite`, or cannot be written.
    """
    check_sizes(ctx, 1, max_chunks)
    check_output(Path(out), overwrite=overwrite)  # fail before the long part
    t0 = time.perf_counter()
    _check_ggml_abi()
    collector = _Collector()
    with open_session(lm_gguf, n_ctx=ctx, n_batch=ctx, threads=threads, cb_eval=collector) as context:
        # gguf-py's writer requires an architecture; the imatrix file keeps the model's.
        arch = context.lm.meta("general.architecture") or "unknown"
        chunks = read_chunks(context.lm, text, ctx, max_chunks)
        for k, chunk in enumerate(chunks):
            context.clear()
            # Last-token logits suffice: qwen35 drops unused rows only after output_norm, so every blk.*
            # matmul sees the whole chunk (_check_counts catches a llama.cpp that drops them earlier).
            decode(context, chunk, 0, all_logits=False)
            if collector.error is not None:
                raise collector.error
            if progress:
                progress(k + 1, len(chunks))
    _check_counts(collector, lm_gguf, len(chunks) * ctx)
    write_gguf(Path(out), arch, _kvs(text, len(chunks), ctx), _tensors(collector), overwrite=overwrite)
    return ImatrixResult(Path(out), len(chunks), ctx, dict(sorted(collector.shapes.items())), time.perf_counter() - t0)


class _Collector:
    """The eval callback: per weight, float64 sums of squares [n_mat, n_cols] and a token count."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.error: Exception | None = None

    def __call__(self, t: int, ask: bool, user_data: int) -> bool:
        # An exception must not cross into C: keep it, stop collecting, raise after the decode.
        if self.error is not None:
            return False
        try:
            tensor = GgmlTensor.from_address(t)
            return self._wanted(tensor) if ask else self._collect(tensor)
        except Exception as err:  # noqa: BLE001 - re-raised by compute_imatrix
            self.error = err
            return False

    @staticmethod
    def _wanted(t: GgmlTensor) -> bool:
        if t.op != GGML_OP_MUL_MAT or not t.src[0] or not t.src[1]:
            return False
        return t.src[1].contents.type == GGML_TYPE_F32 and _weight_name(t.src[0].contents).startswith("blk.")

    def _collect(self, t: GgmlTensor) -> bool:
        w, x = t.src[0].contents, t.src[1].contents
        name = _weight_name(w)
        # ggml_mul_mat's own shape rules: a misread struct fails here, not silently.
        if w.ne[0] != x.ne[0] or t.ne[0] != w.ne[1] or t.ne[1] != x.ne[1] or x.nb[0] != 4 or not x.data:
            raise QuantizeError(
                f"{name}: the ggml tensor layout is not the one this toolkit reads; "
                "use the llama-cpp-python version it was tested with (0.3.36)"
            )
        n_mat = w.ne[2] * w.ne[3]
        ne, nb = tuple(x.ne)[::-1], tuple(x.nb)[::-1]
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
        act = np.ndarray(ne, np.float32, (ctypes.c_char * span).from_address(x.data), strides=nb)
        sums = self.sums.setdefault(name, np.zeros((n_mat, x.ne[0]), np.float64))
        for i3 in range(x.ne[3]):
            for i2 in range(x.ne[2]):
                # 3-D activations on a 2-D weight are flattened, as in llama-imatrix.
                mat = (i3 % w.ne[3]) * w.ne[2] + i2 % w.ne[2]
                sums[mat] += np.sum(np.square(act[i3, i2], dtype=np.float64), axis=0)
        if not np.all(np.isfinite(sums)):
            raise QuantizeError(f"{name}: non-finite activations; the model or the text is broken")
        self.counts[name] = self.counts.get(name, 0) + x.ne[1] * x.ne[2] * x.ne[3] // n_mat
        self.shapes[name] = tuple(w.ne[i] for i in range(4) if i < 2 or w.ne[i] > 1)[::-1]
        return True


def _weight_name(t: GgmlTensor) -> str:
    """The GGUF name of a weight: a backend may decorate it as `CUDA0#blk.0.attn_k.weight#0`."""
    name = t.name.decode("utf-8", "replace")
    return name.split("#")[1] if "#" in name else name


def _check_ggml_abi() -> None:
    """Refuse a libggml whose enum or struct size differs from what this module was written against."""
    lib = ggml_base()
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_tensor_overhead.restype, lib.ggml_tensor_overhead.argtypes = ctypes.c_size_t, []
    op, size = lib.ggml_op_name(GGML_OP_MUL_MAT), lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE
    if op != b"MUL_MAT" or size != ctypes.sizeof(GgmlTensor):
        raise QuantizeError(
            f"unsupported ggml build (op {GGML_OP_MUL_MAT} is {op!r}, ggml_tensor is {size} "
            f"bytes, expected MUL_MAT and {ctypes.sizeof(GgmlTensor)}); use llama-cpp-python 0.3.36"
        )


def _check_counts(collector: _Collector, lm_gguf: Path, n_tokens: int) -> None:
    if not collector.counts:
        raise QuantizeError(f"{lm_gguf}: llama.cpp reported no blk.* matrix multiplications")
    short = sorted(name for name, n in collector.counts.items() if n != n_tokens)
    if short:
        raise QuantizeError(
            f"{lm_gguf}: {short[0]} saw {collector.counts[short[0]]} of {n_tokens} tokens; "
            "this llama.cpp build skips rows the importance matrix needs"
        )


def _kvs(text: Path, n_chunks: int, ctx: int) -> list[KV]:
    return [
        KV("general.type", "imatrix", GGUFValueType.STRING),
        KV("imatrix.datasets", [str(text)], GGUFValueType.ARRAY, GGUFValueType.STRING),
        KV("imatrix.chunk_count", n_chunks, GGUFValueType.UINT32),
        KV("imatrix.chunk_size", ctx, GGUFValueType.UINT32),
    ]


def _tensors(collector: _Collector) -> list[TensorOut]:
    """`<w>.in_sum2` [n_mat, n_cols] and `<w>.counts` [n_mat, 1], F32, sorted by name like llama-imatrix."""
    out = []
    for name in sorted(collector.sums):
        sums = collector.sums[name].astype(np.float32)
        counts = np.full((sums.shape[0], 1), collector.counts[name], np.float32)
        out.append(TensorOut(f"{name}.in_sum2", sums.shape, GGMLQuantizationType.F32, lambda a=sums: [a]))
        out.append(TensorOut(f"{name}.counts", counts.shape, GGMLQuantizationType.F32, lambda a=counts: [a]))
    return out
