"""Logit parity: the LM GGUF in llama.cpp (llama-cpp-python) against transformers in float32, same ids.

F32 GGUFs must match to float-rounding level (llama.cpp's own converter measured NMSE 4e-9 and
99.93 % top-1 on a similar tiny model); the reduced-precision bounds, with their measurements, are in
minicpmv_gguf/verify/bounds.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicpmv_gguf.metrics import nmse, top1_agreement
from minicpmv_gguf.verify.bounds import LM_FLOAT
from minicpmv_gguf.verify.reference import hf_logits, llama_logits, load_llama
from minicpmv_gguf.verify.texts import chat_prompts as prompts


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    from transformers import AutoTokenizer

    from minicpmv_gguf.verify.reference import load_reference_model

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


# (outtype, max NMSE, min top-1): minicpmv_gguf/verify/bounds.py explains the measurements behind them.
BOUNDS = [(t.lower(), *LM_FLOAT[t]) for t in ("F32", "F16", "BF16", "Q8_0")]


@pytest.mark.parametrize("outtype, max_nmse, min_top1", BOUNDS)
def test_logits_match_transformers(reference, convert_cached, tiny_ckpt, outtype, max_nmse, min_top1):
    ids, refs = reference
    worst, top1 = compare(convert_cached(tiny_ckpt, outtype), ids, refs)
    print(f"{outtype}: worst NMSE {worst:.3g}, top-1 {top1:.4%} over {sum(map(len, ids))} positions")
    assert worst <= max_nmse and top1 >= min_top1, (worst, top1)


@pytest.mark.slow  # the checkpoint fixture is looked up by name, so conftest's hook cannot see it
@pytest.mark.parametrize("variant", ["tiny_ckpt_vheads", "tiny_ckpt_bf16"])
def test_variants_match_transformers_at_f32(request, convert_cached, variant):
    """Value heads = 2 x key heads (the reorder), and a bf16 sharded checkpoint (exact upcast)."""
    from transformers import AutoTokenizer

    from minicpmv_gguf.verify.reference import load_reference_model

    path = request.getfixturevalue(variant)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_reference_model(path)
    ids = prompts(tokenizer)
    refs = [hf_logits(model, x) for x in ids]
    worst, top1 = compare(convert_cached(path, "f32"), ids, refs)
    print(f"{variant}: worst NMSE {worst:.3g}, top-1 {top1:.4%}")
    assert worst <= 1e-6 and top1 >= 0.999, (worst, top1)
