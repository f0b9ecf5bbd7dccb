"""The LM tensor table: checked against gguf-py's own qwen35 map, and exhaustive planning errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import pytest

from minicpmv_gguf.checkpoint import open_checkpoint
from minicpmv_gguf.convert_hf_to_gguf.tensor_map import LM, SKIP_PREFIXES, lm_rules
from minicpmv_gguf.errors import TensorMapError
from minicpmv_gguf.tensor_plan import plan_tensors

# HF names gguf-py spells differently; each mapped by hand in our table, for the stated reason.
ORACLE_RENAMES = {".linear_attn.dt_bias": ".linear_attn.dt_proj.bias"}  # llama.cpp renames dt_bias first


def _plan(ckpt, tensors):
    c = ckpt.text
    return plan_tensors(
        tensors.values(),
        lm_rules(c),
        c,
        n_blocks=c.num_hidden_layers,
        layer_types=c.layer_types,
        skip_prefixes=SKIP_PREFIXES,
    )


def test_every_rule_agrees_with_gguf_py(tiny_ckpt):
    c = open_checkpoint(tiny_ckpt).text
    oracle = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN35, c.num_hidden_layers)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN35]}
    for rule in lm_rules(c):
        bid = next(b for b, t in enumerate(c.layer_types) if rule.layers in ("all", t))
        hf = rule.hf.format(bid=bid).replace("language_model.", "")
        for old, new in ORACLE_RENAMES.items():
            hf = hf.replace(old, new)
        expected = oracle.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert expected == rule.gguf.format(bid=bid), (rule.hf, expected)
        assert rule.gguf.rsplit(".", 1)[0] in allowed or rule.gguf in allowed


def test_one_dimensional_tensors_are_f32(tiny_ckpt):
    # llama.cpp's quantizer never touches 1-D tensors, so they must be F32 already.
    ckpt = open_checkpoint(tiny_ckpt)
    planned, _ = _plan(ckpt, ckpt.tensors)
    assert all(p.dtype == "f32" for p in planned if len(p.gguf_shape) == 1)
    assert {p.gguf_name for p in planned if p.dtype == "f32" and len(p.gguf_shape) > 1} == {
        f"blk.{b}.ssm_conv1d.weight" for b, t in enumerate(ckpt.text.layer_types) if t == "linear_attention"
    }


def test_plan_covers_every_lm_tensor_and_skips_the_vision_half(tiny_ckpt):
    ckpt = open_checkpoint(tiny_ckpt)
    planned, skipped = _plan(ckpt, ckpt.tensors)
    assert {p.hf_name for p in planned} | set(skipped) == set(ckpt.tensors)
    assert all(n.startswith(("model.vision_tower.", "model.merger.")) for n in skipped)
    assert len({p.gguf_name for p in planned}) == len(planned)
    assert planned[0].bid is None and planned[-1].bid == ckpt.text.num_hidden_layers - 1


def _plan_with(ckpt_path: Path, edit):
    ckpt = open_checkpoint(ckpt_path)
    tensors = dict(ckpt.tensors)
    edit(tensors)
    return _plan(ckpt, tensors)


def test_all_offenders_are_listed_in_one_error(tiny_ckpt):
    def edit(t):
        t["model.language_model.layers.0.mlp.extra.weight"] = replace(
            t[f"{LM}.norm.weight"], name="model.language_model.layers.0.mlp.extra.weight"
        )
        t["unknown.thing"] = replace(t[f"{LM}.norm.weight"], name="unknown.thing")
        del t[f"{LM}.layers.1.mlp.up_proj.weight"]

    with pytest.raises(TensorMapError) as err:
        _plan_with(tiny_ckpt, edit)
    msg = str(err.value)
    assert "3 tensor problem(s)" in msg
    assert "unknown.thing: no rule maps it" in msg
    assert "layers.0.mlp.extra.weight: no rule maps it" in msg
    assert f"{LM}.layers.1.mlp.up_proj.weight: missing" in msg


def test_wrong_layer_type_and_out_of_range_block_are_refused(tiny_ckpt):
    def edit(t):
        full = next(n for n in t if ".self_attn.q_norm." in n and n.startswith(LM))
        t[f"{LM}.layers.0.self_attn.q_norm.weight"] = replace(t[full], name=f"{LM}.layers.0.self_attn.q_norm.weight")
        t[f"{LM}.layers.99.mlp.up_proj.weight"] = replace(
            t[f"{LM}.layers.0.mlp.up_proj.weight"], name=f"{LM}.layers.99.mlp.up_proj.weight"
        )

    with pytest.raises(TensorMapError) as err:
        _plan_with(tiny_ckpt, edit)
    assert "layer 0 is linear_attention in config.json" in str(err.value)
    assert "layer 99 is outside num_hidden_layers" in str(err.value)


def test_shape_that_disagrees_with_config_is_refused(tiny_ckpt):
    def edit(t):
        ref = t[f"{LM}.embed_tokens.weight"]
        t[ref.name] = replace(ref, shape=(ref.shape[0] - 1, ref.shape[1]))

    with pytest.raises(TensorMapError, match=r"embed_tokens.weight: shape \(\d+, \d+\), config.json implies"):
        _plan_with(tiny_ckpt, edit)


def test_mtp_tensors_are_skipped_on_purpose(tiny_ckpt):
    def edit(t):
        norm = t[f"{LM}.norm.weight"]
        for name in ("mtp.fc.weight", f"{LM}.mtp.layers.0.input_layernorm.weight"):
            t[name] = replace(norm, name=name)

    planned, skipped = _plan_with(tiny_ckpt, edit)
    assert {"mtp.fc.weight", f"{LM}.mtp.layers.0.input_layernorm.weight"} <= set(skipped)
    assert not any("mtp" in p.gguf_name for p in planned)
