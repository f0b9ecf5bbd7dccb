"""Train the tiny MiniCPM-V 4.6 language model on the Python standard library's documentation, on a CPU.

Random weights make quantization statistics meaningless, so the quality tests (tests/test_quant_quality.py)
and the demo use this small trained checkpoint instead. The text is pydoc's plain-text rendering of a fixed
list of stdlib modules: offline and deterministic for one Python version. Split by module: the held-out
and the imatrix calibration text are written to examples/data/ (committed), the rest is training text.

    python examples/train_tiny.py                  # writes examples/minicpmv46-tiny-trained/ (bf16)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import pydoc
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

# torch and transformers are imported in main() only: importing them changes stdlib modules' pydoc text
# (logging.Logger gains methods, inspect.getfile is patched), and render_docs imports this file.
REPO = Path(__file__).resolve().parents[1]

# Held-out modules: never trained on (nor seen by the tokenizer); ~20k tokens for the quality tests.
HELD_OUT = ["textwrap", "heapq", "bisect", "fractions", "csv", "shlex", "fnmatch", "glob", "copy", "pprint",
            "statistics"]
# Calibration text for the importance matrix: training-side modules, as llama-imatrix users do.
CALIBRATION = ["json", "functools", "string", "base64"]
TRAIN = CALIBRATION + [
    "collections", "itertools", "argparse", "pathlib", "random", "decimal", "datetime", "calendar", "re",
    "difflib", "shutil", "tempfile", "logging", "unittest", "dataclasses", "enum", "typing", "contextlib", "abc",
    "operator", "math", "cmath", "struct", "hashlib", "hmac", "secrets", "zipfile", "tarfile", "gzip", "io",
    "queue", "threading", "sched", "urllib.parse", "http.client", "email.message", "html", "xml.etree.ElementTree",
    "sqlite3", "inspect", "tokenize", "dis", "timeit", "traceback", "warnings", "weakref", "types", "numbers",
    "array", "codecs", "unicodedata", "gettext", "getopt", "optparse", "configparser", "plistlib", "uuid",
    "ipaddress", "selectors", "concurrent.futures", "subprocess", "zlib", "binascii", "colorsys", "wave", "bz2",
    "lzma", "filecmp", "linecache", "keyword", "graphlib", "contextvars", "urllib.request", "http.server",
    "smtplib", "imaplib", "ftplib", "socketserver", "xml.dom.minidom", "html.parser", "pickle", "shelve",
    "netrc", "quopri", "cProfile", "pstats", "trace", "pdb", "doctest", "codeop", "code", "reprlib",
]
# KQUANT_TEXT widths (every LM matrix row a multiple of 256, so k-quants apply as on the real model),
# one [lin, lin, lin, full] group instead of two to keep it small and quick to train.
TEXT_OVERRIDES = {"num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"]}
VOCAB_SIZE = 2048  # byte-level BPE merges incl. the 256 byte symbols; the added tokens come on top
# Sections that name this machine (FILE, MODULE REFERENCE), the install (PACKAGE CONTENTS, SUBMODULES) or
# platform-dependent constants (DATA) are dropped.
_DROP_SECTIONS = {"MODULE REFERENCE", "FILE", "PACKAGE CONTENTS", "SUBMODULES", "DATA"}

README = """---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
---

# minicpmv46-tiny-trained

A tiny MiniCPM-V 4.6 checkpoint (the real `MiniCPMV4_6ForConditionalGeneration` classes) whose language
model was trained briefly on a CPU, so that quantization has something real to lose. It writes
pydoc-like English and Python; it knows nothing else. The vision tower is tiny and random (outputs about
images are meaningless); it is there so that the mmproj converter and libmtmd have something to load.

- Language model: Qwen3.5 layout `[linear, linear, linear, full]` attention, hidden {hidden}, MLP {inter},
  4 x 64 attention heads (2 KV heads), 4 x 64 Gated-DeltaNet heads: every matrix row is a multiple of 256,
  so llama.cpp's k-quants apply as on the released model. {n_lm:,} parameters (tied embeddings).
- Tokenizer: byte-level BPE trained on the training text ({bpe} entries: the 256 byte symbols and
  {merges} merges), the Qwen3.5 pre-tokenizer regex, NFC, and the released model's special and added
  tokens and chat template ({vocab} tokens in all).
- Training text: pydoc's plain-text rendering of {n_train} Python {python} standard-library modules
  ({train_chars:,} characters, {train_tokens:,} tokens, sha256 prefix {sha}); held out by module:
  `examples/data/heldout.txt` ({held_tokens:,} tokens). The text comes from CPython's docstrings (PSF License).
- Training: {steps} AdamW steps of {batch} x {ctx} tokens (peak lr {lr}, warm-up then cosine), seed {seed},
  {threads} CPU threads: {minutes:.1f} minutes wall clock, median step {step_s:.2f} s. Held-out loss
  {held_loss:.3f} nats/token, perplexity {held_ppl:.2f} (bf16 weights, torch, chunks of {ctx}); the gap
  to the train loss is the held-out modules' own names and topics.
- Train loss: {first_loss:.2f} at step 1; mean of the {log_every} steps up to step N: {curve}.
- Weights: bfloat16 safetensors.

Made with (from the repository root, torch {torch}, transformers {transformers}):

    {command}
"""


def module_text(name: str) -> str:
    """pydoc's plain text of one module without the machine-specific parts."""
    raw = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
    out, keep = [], True
    for line in raw.splitlines():
        if line and not line[0].isspace() and line.isupper():  # a section header
            keep = line not in _DROP_SECTIONS
        if keep:
            out.append(line.rstrip())
    text = "\n".join(out).strip() + "\n"
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses in default-argument reprs


def render_docs(names: list[str]) -> list[str]:
    """module_text of each name, in a fresh isolated interpreter that has imported nothing else."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import train_tiny; "
            "print(json.dumps([train_tiny.module_text(n) for n in sys.argv[2:]]))")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, str(Path(__file__).parent), *names],
                         capture_output=True, text=True, encoding="utf-8", check=True)
    return json.loads(out.stdout)


def lm_loss(model, ids):
    """Mean next-token cross-entropy of the language model alone on rows of token ids [B, T+1]."""
    import torch.nn.functional as F

    hidden = model.model.language_model(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())


def heldout_loss(model, ids, ctx: int, batch: int) -> float:
    """Mean loss over whole chunks of ctx tokens, positions 0..ctx-2 scored, as the GGUF evaluator does."""
    import torch

    n = len(ids) // ctx
    chunks = ids[: n * ctx].view(n, ctx)
    with torch.no_grad():
        total = sum(lm_loss(model, c).item() * len(c) for c in chunks.split(batch))
    return total / n


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "minicpmv46-tiny-trained")
    parser.add_argument("--data-dir", type=Path, default=REPO / "examples" / "data")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new or empty directory")
    t0 = time.perf_counter()
    docs = dict(zip(TRAIN + HELD_OUT, render_docs(TRAIN + HELD_OUT)))
    train_docs = [docs[n] for n in TRAIN]
    train_text, held_text = "\n".join(train_docs), "\n".join(docs[n] for n in HELD_OUT)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (args.data_dir / "heldout.txt").write_text(held_text, encoding="utf-8")
    (args.data_dir / "calibration.txt").write_text("\n".join(docs[n] for n in CALIBRATION), encoding="utf-8")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: no hub kernels, no downloads
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from tests.fixtures.tiny_checkpoint import KQUANT_TEXT, build_tokenizer, new_model, save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(train_docs, VOCAB_SIZE)
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"])
    held_ids = torch.tensor(tokenizer(held_text)["input_ids"])
    print(f"text: {len(train_docs)} training modules, {len(train_text):,} chars, {len(train_ids):,} tokens; "
          f"held out {len(HELD_OUT)} modules, {len(held_ids):,} tokens; vocab {len(tokenizer)} "
          f"({time.perf_counter() - t0:.1f} s)")

    model = new_model(tokenizer, {**KQUANT_TEXT, **TEXT_OVERRIDES}, args.seed)
    model.model.vision_tower.requires_grad_(False)  # only the LM is trained; the vision side stays random
    model.model.merger.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    n_lm = sum(p.numel() for p in model.model.language_model.parameters())
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms, biases, A_log, dt_bias
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t_train, losses, step_times = time.perf_counter(), [], []
    for step in range(args.steps):
        t_step = time.perf_counter()
        starts = torch.randint(0, len(train_ids) - args.ctx - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.ctx + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - t_step)
        if (step + 1) % args.log_every == 0 or step == 0:
            window = losses[-args.log_every :]
            print(f"step {step + 1:5d}  loss {sum(window) / len(window):.3f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.perf_counter() - t_train:6.1f} s", flush=True)
    minutes = (time.perf_counter() - t_train) / 60
    step_s = sorted(step_times)[len(step_times) // 2]

    model.eval()
    with torch.no_grad():  # evaluate what is saved: the bf16-rounded weights
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    held = heldout_loss(model, held_ids, args.ctx, args.batch)
    print(f"trained {args.steps} steps in {minutes:.1f} min (median {step_s:.2f} s per step); "
          f"held-out loss {held:.3f}, perplexity {math.exp(held):.2f}")

    every = min(args.log_every, args.steps)
    stride = max(every, args.steps // 8)  # about eight points of the curve in the README
    marks = sorted({*range(stride, args.steps + 1, stride), args.steps})
    curve = ", ".join(f"{sum(losses[m - every:m]) / every:.2f} at {m}" for m in marks)
    readme = README.format(
        hidden=KQUANT_TEXT["hidden_size"], inter=KQUANT_TEXT["intermediate_size"], n_lm=n_lm, bpe=VOCAB_SIZE,
        merges=VOCAB_SIZE - 256, vocab=len(tokenizer), n_train=len(TRAIN), python=platform.python_version(),
        train_chars=len(train_text), train_tokens=len(train_ids),
        sha=hashlib.sha256(train_text.encode()).hexdigest()[:16], held_tokens=len(held_ids), steps=args.steps,
        batch=args.batch, ctx=args.ctx, lr=args.lr, seed=args.seed, threads=args.threads, minutes=minutes,
        step_s=step_s, log_every=every, first_loss=losses[0], curve=curve, held_loss=held,
        held_ppl=math.exp(held), torch=torch.__version__, transformers=transformers.__version__,
        command=shlex.join(["python", "examples/train_tiny.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    save_checkpoint(model, tokenizer, args.out, dtype="bfloat16", readme=readme)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {(time.perf_counter() - t0) / 60:.1f} min in all")


if __name__ == "__main__":
    main()
