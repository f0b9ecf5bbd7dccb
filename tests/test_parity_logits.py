"""Logit parity: the LM GGUF in llama.cpp (llama-cpp-python) against transformers in float32, same ids.

F32 GGUFs must match to float-rounding level (llama.cpp's own converter measured NMSE 4e-9 and
99.93 % top-1 on a similar tiny model); the reduced-precision bounds are measured and explained below.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference import hf_logits, llama_logits, load_llama, long_text, nmse, top1_agreement

MESSAGES = [
    [{"role": "user", "content": "Hello! Describe the sky."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "def f(x): return x*2"},
     {"role": "assistant", "content": "It doubles x."}, {"role": "user", "content": "你好，世界！42?"}],
]


def prompts(tokenizer) -> list[list[int]]:
    """Chat prompts, raw text, and one prompt of at least 1,000 tokens (crosses 64-token DeltaNet chunks)."""
    ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
           for m in MESSAGES]
    ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
    ids.append(tokenizer(long_text(300, seed=1), add_special_tokens=False).input_ids)
    long = tokenizer(long_text(6000, seed=2), add_special_tokens=False).input_ids
    assert len(long) >= 1000, len(long)
    return ids + [long[:1100]]


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_checkpoint import load_reference_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    model = load_reference_model(tiny_ckpt)
    ids = prompts(tokenizer)
    return ids, [hf_logits(model, x) for x in ids]


def compare(gguf_path, ids, refs) -> tuple[float, float]:
    """(worst per-prompt NMSE, pooled top-1 agreement)."""
    llm = load_llama(gguf_path)
    outs = [llama_logits(llm, x) for x in ids]
    worst = max(nmse(o, r) for o, r in zip(outs, refs))
    return worst, top1_agreement(np.concatenate(outs), np.concatenate(refs))


# (outtype, max NMSE, min top-1): about 4x the NMSE measured on this seeded checkpoint (1,377 positions:
# f32 4.5e-9 / 100 %, f16 2.3e-5 / 99.3 %, bf16 1.2e-3 / 95.1 %, q8_0 1.7e-2 / 83.0 %). Why they differ:
# - f16 rounds weights to 11 significant bits; bf16 keeps 8, so ~(2^3)^2 = 64x the squared error.
# - ggml's bf16 and q8_0 matmuls also round the activations (to bf16, or to 8-bit blocks); our q8_0 file
#   is byte-identical to llama.cpp's own quantizer output (test_q8_0_equals_llama_cpp_quantizer).
# - Random tiny weights give near-tied logits, so small errors flip many argmaxes; real weights flip fewer.
BOUNDS = [
    ("f32", 1e-6, 0.999),
    ("f16", 1e-4, 0.98),
    ("bf16", 5e-3, 0.90),
    ("q8_0", 5e-2, 0.75),
]


@pytest.mark.parametrize("outtype, max_nmse, min_top1", BOUNDS)
def test_logits_match_transformers(reference, convert_cached, tiny_ckpt, outtype, max_nmse, min_top1):
    ids, refs = reference
    worst, top1 = compare(convert_cached(tiny_ckpt, outtype), ids, refs)
    print(f"{outtype}: worst NMSE {worst:.3g}, top-1 {top1:.4%} over {sum(map(len, ids))} positions")
    assert worst <= max_nmse and top1 >= min_top1, (worst, top1)


@pytest.mark.parametrize("variant", ["tiny_ckpt_vheads", "tiny_ckpt_bf16"])
def test_variants_match_transformers_at_f32(request, convert_cached, variant):
    """Value heads = 2 x key heads (the reorder), and a bf16 sharded checkpoint (exact upcast)."""
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_checkpoint import load_reference_model

    path = request.getfixturevalue(variant)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_reference_model(path)
    ids = prompts(tokenizer)
    refs = [hf_logits(model, x) for x in ids]
    worst, top1 = compare(convert_cached(path, "f32"), ids, refs)
    print(f"{variant}: worst NMSE {worst:.3g}, top-1 {top1:.4%}")
    assert worst <= 1e-6 and top1 >= 0.999, (worst, top1)
