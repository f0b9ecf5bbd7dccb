"""Helpers that run the same token ids through transformers (the reference) and llama.cpp."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

N_THREADS = 2


def nmse(test: np.ndarray, ref: np.ndarray) -> float:
    """mean((test - ref)^2) / var(ref): llama.cpp's examples/model-conversion check-nmse definition."""
    return float(np.mean((test.astype(np.float64) - ref) ** 2) / np.var(ref.astype(np.float64)))


def top1_agreement(test: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(test.argmax(-1) == ref.argmax(-1)))


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """float32 logits [T, vocab] of the transformers reference for one sequence."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def load_llama(gguf_path: Path, n_ctx: int = 2048, **kwargs):
    """A CPU Llama that keeps the logits of every position (llm.scores)."""
    from llama_cpp import Llama

    kwargs.setdefault("logits_all", True)
    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=512, n_gpu_layers=0, n_threads=N_THREADS,
                 verbose=False, **kwargs)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """float32 logits [T, vocab] from llama.cpp for one sequence (memory reset first)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n",
    "你好，世界！这是一个测试。", "Numbers: 3.14159, 2.71828, 42 and 1000000.", "What is in the picture?",
    "  indented\tline with tabs\n\n", "Émoji test 🙂🚀 and accents: café, naïve, Zürich.",
    "for i in range(10):\n    print(i * i)\n", "<|im_start|>user\nHi<|im_end|>\n", "MiniCPM-V 4.6 runs on a CPU.",
]


def long_text(n_chars: int, seed: int = 0) -> str:
    """Varied text of about n_chars characters, seeded."""
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < n_chars:
        parts.append(rng.choice(SENTENCES) + rng.choice([" ", "\n", "", "  "]))
    return "".join(parts)
