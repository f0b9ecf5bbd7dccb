"""Tokenizer parity: llama.cpp's ids (gpt2 BPE, pre-tokenizer qwen35) equal Hugging Face's, string by string."""

from __future__ import annotations

import random
import unicodedata

import pytest

from tests.reference import SENTENCES, load_llama

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<image>", "</image>", "<slice>",
            "</slice>", "<image_id>", "</image_id>", "<think>", "</think>", "<tool_call>"]
PIECES = [
    "hello", "Hello", "HELLO", "don't", "it's", "we'll", "I'M", "you're", "0", "42", "3.14159", "1,000,000",
    "2026-11-21", "x1y2z3", "你好", "世界", "图片里有什么？", "日本語のテキスト", "한국어", "Ελληνικά", "кириллица",
    "🙂", "🚀🚀", "👨‍👩‍👧", "café", "naïve", "Zürich", "def f(x):", "return x*2", "{\"a\": [1, 2]}", "a+=1;",
    "#include <stdio.h>", "print('hi')", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "...", "!!!", "?!",
    "@#$%^&*()", "[]{}<>", "/\\|~`", "'\"", "--", "==>", "ﬁ", "Å", "e\u0301",
]


def strings() -> list[str]:
    """At least 200 strings: the pieces alone, with specials, sentences, and seeded random mixes."""
    rng = random.Random(0)
    out = list(PIECES) + list(SENTENCES) + SPECIALS
    out += [f"{s}{rng.choice(PIECES)}" for s in SPECIALS]
    while len(out) < 240:
        k = rng.randint(2, 8)
        out.append(rng.choice(["", " ", "\n"]).join(rng.choice(PIECES + SPECIALS[:3]) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def tokenizers_pair(tiny_ckpt, convert_cached):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_ckpt)
    llm = load_llama(convert_cached(tiny_ckpt, "f32"), n_ctx=256, vocab_only=True)
    return hf, llm


def llama_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def test_token_ids_equal_on_varied_strings(tokenizers_pair):
    # tokenizer.json normalizes to NFC first; llama.cpp has no normalizer, so it is given NFC text.
    hf, llm = tokenizers_pair
    cases = strings()
    assert len(cases) >= 200 and sum(unicodedata.is_normalized("NFC", t) for t in cases) >= 200
    mismatches = []
    for text in cases:
        want = hf(text, add_special_tokens=False).input_ids
        got = llama_ids(llm, unicodedata.normalize("NFC", text))
        if got != want:
            mismatches.append((text, want, got))
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ, first: {mismatches[:3]}"


def test_llama_cpp_does_not_normalize_to_nfc(tokenizers_pair):
    # Known llama.cpp limitation (the released tokenizer has the same NFC step): decomposed text
    # tokenizes differently unless the caller normalizes it. If this starts passing, drop the workaround.
    hf, llm = tokenizers_pair
    decomposed = "cafe\u0301"
    assert llama_ids(llm, decomposed) != hf(decomposed, add_special_tokens=False).input_ids


def test_detokenization_round_trips(tokenizers_pair):
    hf, llm = tokenizers_pair
    for text in strings()[:60]:
        ids = hf(text, add_special_tokens=False).input_ids
        assert llm.detokenize(ids, special=True).decode("utf-8") == hf.decode(ids), text
