"""The fixed texts parity is measured on: tokenizer strings, chat prompts, and varied long text."""

from __future__ import annotations

import random

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "你好，世界！这是一个测试。",
    "Numbers: 3.14159, 2.71828, 42 and 1000000.",
    "What is in the picture?",
    "  indented\tline with tabs\n\n",
    "Émoji test 🙂🚀 and accents: café, naïve, Zürich.",
    "for i in range(10):\n    print(i * i)\n",
    "<|im_start|>user\nHi<|im_end|>\n",
    "MiniCPM-V 4.6 runs on a CPU.",
]
SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|image_pad|>",
    "<image>",
    "</image>",
    "<slice>",
    "</slice>",
    "<image_id>",
    "</image_id>",
    "<think>",
    "</think>",
    "<tool_call>",
]
PIECES = [
    "hello",
    "Hello",
    "HELLO",
    "don't",
    "it's",
    "we'll",
    "I'M",
    "you're",
    "0",
    "42",
    "3.14159",
    "1,000,000",
    "2026-11-21",
    "x1y2z3",
    "你好",
    "世界",
    "图片里有什么？",
    "日本語のテキスト",
    "한국어",
    "Ελληνικά",
    "кириллица",
    "🙂",
    "🚀🚀",
    "👨‍👩‍👧",
    "café",
    "naïve",
    "Zürich",
    "def f(x):",
    "return x*2",
    '{"a": [1, 2]}',
    "a+=1;",
    "#include <stdio.h>",
    "print('hi')",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "...",
    "!!!",
    "?!",
    "@#$%^&*()",
    "[]{}<>",
    "/\\|~`",
    "'\"",
    "--",
    "==>",
    "ﬁ",
    "Å",
    "e\u0301",
]
MESSAGES = [
    [{"role": "user", "content": "Hello! Describe the sky."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def f(x): return x*2"},
        {"role": "assistant", "content": "It doubles x."},
        {"role": "user", "content": "你好，世界！42?"},
    ],
]


def long_text(n_chars: int, seed: int = 0) -> str:
    """Varied text of about n_chars characters, seeded."""
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < n_chars:
        parts.append(rng.choice(SENTENCES) + rng.choice([" ", "\n", "", "  "]))
    return "".join(parts)


def tokenizer_strings() -> list[str]:
    """At least 200 strings: the pieces alone, with specials, sentences, and seeded random mixes."""
    rng = random.Random(0)
    out = list(PIECES) + list(SENTENCES) + SPECIALS
    out += [f"{s}{rng.choice(PIECES)}" for s in SPECIALS]
    while len(out) < 240:
        k = rng.randint(2, 8)
        out.append(rng.choice(["", " ", "\n"]).join(rng.choice(PIECES + SPECIALS[:3]) for _ in range(k)))
    return out


def chat_prompts(tokenizer, long_tokens: int = 1100) -> list[list[int]]:
    """Chat prompts, raw text, and one prompt of `long_tokens` tokens (it crosses 64-token DeltaNet chunks)."""
    ids = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False) for m in MESSAGES
    ]
    ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
    ids.append(tokenizer(long_text(300, seed=1), add_special_tokens=False).input_ids)
    long = tokenizer(long_text(6 * long_tokens, seed=2), add_special_tokens=False).input_ids
    if len(long) < long_tokens:  # a vocabulary of very long tokens: repeat the text
        long *= long_tokens // max(len(long), 1) + 1
    return ids + [long[:long_tokens]]
