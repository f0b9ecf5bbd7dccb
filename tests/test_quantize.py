"""Quantization through llama.cpp's quantizer: tensor types as llama.cpp's rules give them, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from minicpmv_gguf.errors import GGUFError, OutputError, QuantizeError
from minicpmv_gguf.gguf_io import read_metadata
from minicpmv_gguf.quantize import QUANT_TYPES, parse_overrides, quantize_lm, resolve_type
from minicpmv_gguf.verify.reference import load_llama
from tests.helpers import run_cli


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's src/llama-quant.cpp rule for which layers Q4_K_M keeps at Q6_K (C integer division)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@pytest.fixture(scope="module")
def kquant_f16(tiny_ckpt_kquant, convert_cached):
    return convert_cached(tiny_ckpt_kquant, "f16")


@pytest.fixture(scope="module")
def q4_k_m(kquant_f16, tmp_path_factory):
    return quantize_lm(kquant_f16, tmp_path_factory.mktemp("q") / "lm-Q4_K_M.gguf", threads=2)


def types_of(path) -> dict[str, str]:
    return {t.name: t.ggml_type for t in read_metadata(path)[1]}


def test_q4_k_m_follows_llama_cpp_rules(q4_k_m, tiny_ckpt_kquant):
    types = types_of(q4_k_m.out)
    n = 8  # KQUANT_TEXT layers; each has one attn_v-like tensor (attn_qkv in linear layers, attn_v in full ones)
    assert types["token_embd.weight"] == "Q6_K"  # tied: quantized like the output tensor
    assert "output.weight" not in types
    for bid in range(n):
        v_like = f"blk.{bid}.attn_v.weight" if f"blk.{bid}.attn_v.weight" in types else f"blk.{bid}.attn_qkv.weight"
        want = "Q6_K" if use_more_bits(bid, n) else "Q4_K"
        assert types[v_like] == want, v_like
        assert types[f"blk.{bid}.ffn_down.weight"] == want, bid
        assert types[f"blk.{bid}.ffn_up.weight"] == types[f"blk.{bid}.ffn_gate.weight"] == "Q4_K"
    for name, t in types.items():
        if name.endswith(("norm.weight", ".ssm_a", ".ssm_dt.bias", "ssm_conv1d.weight")):
            assert t == "F32", name
    kv = read_metadata(q4_k_m.out)[0]
    assert kv["general.file_type"] == QUANT_TYPES["Q4_K_M"]
    assert q4_k_m.out_bytes < q4_k_m.in_bytes / 2.5 and 4.5 < q4_k_m.bits_per_weight < 7


def test_q4_k_m_loads_and_generates(q4_k_m):
    llm = load_llama(q4_k_m.out, n_ctx=256)  # logits_all: every row of llm.scores is written
    out = llm.create_completion("<|im_start|>user\nHello<|im_end|>\n", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
    assert np.all(np.isfinite(llm.scores[: llm.n_tokens]))


def test_recipe_keeps_sensitive_tensors_at_q8_0(kquant_f16, q4_k_m, tmp_path):
    result = quantize_lm(kquant_f16, tmp_path / "recipe.gguf", recipe="Q4_K_M-sensitive", threads=2)
    types = types_of(result.out)
    sensitive = [n for n in types if n.endswith(("attn_gate.weight", "attn_qkv.weight", "ssm_out.weight"))]
    assert sensitive and all(types[n] == "Q8_0" for n in sensitive)
    assert types["blk.3.attn_v.weight"] == types_of(q4_k_m.out)["blk.3.attn_v.weight"]
    assert q4_k_m.out_bytes < result.out_bytes


def test_tensor_type_override(kquant_f16, tmp_path):
    result = quantize_lm(
        kquant_f16, tmp_path / "o.gguf", qtype="q4_k_s", tensor_types=parse_overrides([r"ffn_up=q8_0"]), threads=2
    )
    types = types_of(result.out)
    assert {t for n, t in types.items() if "ffn_up" in n} == {"Q8_0"}
    assert result.qtype == "Q4_K_S"


def test_type_names_and_aliases():
    assert resolve_type("q4_k") == "Q4_K_M" and resolve_type("iq4_xs") == "IQ4_XS"
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q9_K'"):
        resolve_type("Q9_K")
    with pytest.raises(QuantizeError, match="PATTERN=TYPE"):
        parse_overrides(["ffn_up"])
    with pytest.raises(QuantizeError, match="unknown tensor type"):
        parse_overrides(["ffn_up=q9"])


def test_refusals(kquant_f16, q4_k_m, tmp_path, tiny_ckpt):
    from minicpmv_gguf.mmproj import convert_mmproj

    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix"):
        quantize_lm(kquant_f16, tmp_path / "x.gguf", qtype="IQ2_XXS")
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_lm(q4_k_m.out, tmp_path / "x.gguf")
    mm = convert_mmproj(tiny_ckpt, tmp_path / "mm.gguf").out
    with pytest.raises(QuantizeError, match="is an mmproj GGUF"):
        quantize_lm(mm, tmp_path / "x.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        quantize_lm(junk, tmp_path / "x.gguf")
    with pytest.raises(OutputError, match="already exists"):
        quantize_lm(kquant_f16, q4_k_m.out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.gguf", "mm.gguf"]


def test_cli_quantize(kquant_f16, tmp_path):
    r = run_cli("quantize", kquant_f16, "-o", tmp_path / "q.gguf", "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'q.gguf'}: Q8_0, ") and "bits per weight" in r.stdout
    r = run_cli("quantize", kquant_f16, "-o", tmp_path / "q2.gguf", "--type", "IQ1_S")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "needs an importance matrix" in r.stderr
