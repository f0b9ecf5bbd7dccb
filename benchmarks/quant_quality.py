#!/usr/bin/env python3
"""What each quantization type costs in quality, on the small trained checkpoint.

    python benchmarks/quant_quality.py [--chunks N] [--threads 1] [--workdir DIR] [--results DIR]

The trained checkpoint (examples/minicpmv46-tiny-trained, made by examples/train_tiny.py) is converted to
an F32 LM GGUF, the reference. An importance matrix is computed from examples/data/calibration.txt
(training-side text). Each row of VARIANTS is quantized with llama.cpp's quantizer and evaluated against
the F32 GGUF on the held-out text examples/data/heldout.txt (modules never trained on), in chunks of CTX
tokens: mean / 99th-percentile KL divergence, top-1 agreement, perplexity ratio.

Bits per weight count tensor data only, as llama.cpp reports it (the file also holds the tokenizer, which
weighs a lot next to a 3.4 M-parameter model). Results go to benchmarks/results/quant_quality.md and .json.
tests/test_quant_quality.py runs the same measurements through these helpers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from minicpmv_gguf.convert_hf_to_gguf import convert_lm  # noqa: E402
from minicpmv_gguf.gguf_io import read_gguf_header  # noqa: E402
from minicpmv_gguf.quantize import quantize_lm  # noqa: E402
from minicpmv_gguf.quantize.evaluate import EvalResult, evaluate  # noqa: E402
from minicpmv_gguf.quantize.imatrix import compute_imatrix  # noqa: E402

CHECKPOINT = REPO / "examples" / "minicpmv46-tiny-trained"
HELDOUT = REPO / "examples" / "data" / "heldout.txt"
CALIBRATION = REPO / "examples" / "data" / "calibration.txt"
RESULTS = REPO / "benchmarks" / "results"
CTX = 256  # the training context
BATCH = 256  # one decode per chunk: the model is tiny, the per-call overhead is not


@dataclass(frozen=True)
class Variant:
    label: str
    qtype: str = "Q4_K_M"
    recipe: str | None = None
    imatrix: bool = False

    @property
    def file_stem(self) -> str:
        return self.label.replace(" + ", "-").replace(" ", "-")


VARIANTS = [
    Variant("Q8_0", "Q8_0"),
    Variant("Q6_K", "Q6_K"),
    Variant("Q4_K_M", "Q4_K_M"),
    Variant("Q4_K_M-sensitive", recipe="Q4_K_M-sensitive"),
    Variant("Q4_K_M + imatrix", "Q4_K_M", imatrix=True),
    Variant("IQ4_XS", "IQ4_XS"),
    Variant("IQ4_XS + imatrix", "IQ4_XS", imatrix=True),
]


@dataclass(frozen=True)
class Row:
    label: str
    file_bytes: int
    bits_per_weight: float  # tensor data only, as llama.cpp prints it
    quant_seconds: float
    eval: EvalResult

    def as_dict(self) -> dict:
        ev = {**self.eval.as_dict(), "model": Path(self.eval.model).name, "ref": Path(self.eval.ref).name}
        return {
            "label": self.label,
            "file_bytes": self.file_bytes,
            "bits_per_weight": self.bits_per_weight,
            "quant_seconds": self.quant_seconds,
            **ev,
        }


def tensor_bits_per_weight(gguf: Path) -> float:
    tensors = read_gguf_header(gguf).tensors
    return 8 * sum(t.nbytes for t in tensors) / sum(math.prod(t.shape) for t in tensors)


def reference(workdir: Path, checkpoint: Path = CHECKPOINT) -> Path:
    """The checkpoint's F32 LM GGUF (bf16 weights widened exactly)."""
    return convert_lm(checkpoint, workdir / "lm-F32.gguf", outtype="f32", overwrite=True).out


def imatrix(f32: Path, workdir: Path, *, threads: int) -> Path:
    """Importance matrix of the F32 model over the whole calibration text."""
    out = workdir / "imatrix.gguf"
    compute_imatrix(f32, CALIBRATION, out, ctx=CTX, threads=threads, overwrite=True)
    return out


def quantize(variant: Variant, f32: Path, workdir: Path, *, imatrix_path: Path | None, threads: int):
    """quantize_lm for one variant -> QuantizeResult."""
    if variant.imatrix and imatrix_path is None:
        raise ValueError(f"{variant.label} needs the imatrix")
    return quantize_lm(
        f32,
        workdir / f"lm-{variant.file_stem}.gguf",
        qtype=variant.qtype,
        recipe=variant.recipe,
        imatrix=imatrix_path if variant.imatrix else None,
        threads=threads,
        overwrite=True,
    )


def evaluate_heldout(model: Path, ref: Path, *, max_chunks: int | None, threads: int) -> EvalResult:
    return evaluate(model, ref, HELDOUT, ctx=CTX, batch=BATCH, max_chunks=max_chunks, threads=threads)


def measure(
    variants: list[Variant], workdir: Path, *, max_chunks: int | None, threads: int, checkpoint: Path = CHECKPOINT
) -> tuple[Path, list[Row]]:
    f32 = reference(workdir, checkpoint)
    imatrix_path = imatrix(f32, workdir, threads=threads) if any(v.imatrix for v in variants) else None
    rows = []
    for v in variants:
        q = quantize(v, f32, workdir, imatrix_path=imatrix_path, threads=threads)
        ev = evaluate_heldout(q.out, f32, max_chunks=max_chunks, threads=threads)
        rows.append(Row(v.label, q.out_bytes, tensor_bits_per_weight(q.out), q.seconds, ev))
        print(f"{v.label}: {ev.kld_mean:.5f} KLD, {100 * ev.top1:.2f} % top-1", file=sys.stderr, flush=True)
    return f32, rows


def markdown(f32: Path, rows: list[Row], threads: int, checkpoint: Path = CHECKPOINT) -> str:
    ev0 = rows[0].eval
    head = (
        f"Checkpoint `{checkpoint.name}`, each type against its F32 GGUF "
        f"({f32.stat().st_size / 1e6:.2f} MB, {tensor_bits_per_weight(f32):.1f} bits per weight) on "
        f"`{HELDOUT.relative_to(REPO)}`: {ev0.n_scored:,} scored tokens ({ev0.n_chunks} chunks of {ev0.ctx}). "
        f"F32 perplexity {ev0.ppl_ref:.3f}. Bits per weight: tensor data only. imatrix: from "
        f"`{CALIBRATION.relative_to(REPO)}`. {threads} thread(s).\n\n"
    )
    lines = [
        "| type | file size | bits/weight | quantize time | mean KLD | p99 KLD | top-1 | PPL ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e = r.eval
        lines.append(
            f"| {r.label} | {r.file_bytes / 1e6:.2f} MB | {r.bits_per_weight:.2f} | {r.quant_seconds:.2f} s "
            f"| {e.kld_mean:.5f} | {e.kld_p99:.4f} | {100 * e.top1:.2f} % | {e.ppl_ratio:.4f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--chunks", type=int, default=None, help="held-out chunks to score (default: all)")
    # One thread by default: on a 3.4 M-parameter model 2 threads gain ~1.4x on an idle machine but lose
    # up to 8x on a busy one (llama.cpp's thread barriers); the statistics are identical.
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads for every step")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the GGUFs here (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        f32, rows = measure(VARIANTS, workdir, max_chunks=args.chunks, threads=args.threads, checkpoint=args.checkpoint)
        md = markdown(f32, rows, args.threads, args.checkpoint)
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "quant_quality.md").write_text(md, encoding="utf-8")
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        "llama_cpp_python": metadata.version("llama-cpp-python"),
    }
    (args.results / "quant_quality.json").write_text(
        json.dumps({"env": env, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
