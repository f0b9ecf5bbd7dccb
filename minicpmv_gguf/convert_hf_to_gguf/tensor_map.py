"""The HF -> GGUF tensor table for the MiniCPM-V 4.6 language model, and the exhaustive plan over it.

Every checkpoint tensor is mapped by exactly one Rule or skipped by a named prefix; anything else is
one TensorMapError listing all offenders. Expected shapes come from config.json, so a checkpoint
whose weights disagree with its config fails before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from ..checkpoint import TextConfig
from ..errors import TensorMapError
from ..safetensors_io import TensorRef
from .transforms import Transform, add_one, chain, keep, neg_exp, squeeze_conv1d, v_head_reorders

LM = "model.language_model"
BLK = LM + ".layers.{bid}"

# Prefixes of tensors the LM GGUF leaves out on purpose: the vision half goes to the mmproj GGUF,
# and MTP (multi-token prediction) heads are not exported (block_count = num_hidden_layers).
SKIP_PREFIXES = ("model.vision_tower.", "model.merger.", "mtp.", LM + ".mtp.")

Shape = Callable[[TextConfig], tuple[int, ...]]


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor (per block when `hf` has {bid}) and the GGUF tensor it becomes."""

    hf: str
    gguf: str
    shape: Shape                # expected HF shape, from the config
    transform: Transform = keep
    f32: bool = False           # llama.cpp needs F32: norms, 1-D tensors, ssm_a, ssm_conv1d
    layers: str = "all"         # "all", "linear_attention" or "full_attention"
    optional: bool = False
    gguf_shape: Shape | None = None  # when the transform changes the shape


def lm_rules(c: TextConfig) -> tuple[Rule, ...]:
    """The table, with the config-dependent value-head reorder bound in."""
    v = v_head_reorders(c.linear_num_key_heads, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_k_dim)
    H, lin, full = c.hidden_size, "linear_attention", "full_attention"
    return (
        Rule(f"{LM}.embed_tokens.weight", "token_embd.weight", lambda c: (c.vocab_size, H)),
        Rule("lm_head.weight", "output.weight", lambda c: (c.vocab_size, H), optional=True),
        Rule(f"{LM}.norm.weight", "output_norm.weight", lambda c: (H,), add_one, f32=True),
        Rule(f"{BLK}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", lambda c: (H,), add_one, f32=True),
        Rule(f"{BLK}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight",
             lambda c: (H,), add_one, f32=True),
        Rule(f"{BLK}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", lambda c: (c.intermediate_size, H)),
        Rule(f"{BLK}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", lambda c: (c.intermediate_size, H)),
        Rule(f"{BLK}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", lambda c: (H, c.intermediate_size)),
        # Gated full attention: q_proj rows stay [q_h0, gate_h0, q_h1, ...], as llama.cpp views them.
        Rule(f"{BLK}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", lambda c: (c.q_gate_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", lambda c: (c.kv_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", lambda c: (c.kv_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda c: (H, c.attn_dim), layers=full),
        Rule(f"{BLK}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", lambda c: (c.head_dim,),
             add_one, f32=True, layers=full),
        Rule(f"{BLK}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", lambda c: (c.head_dim,),
             add_one, f32=True, layers=full),
        # Gated DeltaNet linear attention.
        Rule(f"{BLK}.linear_attn.in_proj_qkv.weight", "blk.{bid}.attn_qkv.weight", lambda c: (c.linear_qkv_dim, H),
             v["qkv"], layers=lin),
        Rule(f"{BLK}.linear_attn.in_proj_z.weight", "blk.{bid}.attn_gate.weight", lambda c: (c.linear_v_dim, H),
             v["rows"], layers=lin),
        Rule(f"{BLK}.linear_attn.in_proj_b.weight", "blk.{bid}.ssm_beta.weight",
             lambda c: (c.linear_num_value_heads, H), v["heads"], layers=lin),
        Rule(f"{BLK}.linear_attn.in_proj_a.weight", "blk.{bid}.ssm_alpha.weight",
             lambda c: (c.linear_num_value_heads, H), v["heads"], layers=lin),
        Rule(f"{BLK}.linear_attn.A_log", "blk.{bid}.ssm_a", lambda c: (c.linear_num_value_heads,),
             chain(neg_exp, v["heads"]), f32=True, layers=lin),
        Rule(f"{BLK}.linear_attn.dt_bias", "blk.{bid}.ssm_dt.bias", lambda c: (c.linear_num_value_heads,),
             v["heads"], f32=True, layers=lin),
        # ggml_ssm_conv reads F32 only.
        Rule(f"{BLK}.linear_attn.conv1d.weight", "blk.{bid}.ssm_conv1d.weight",
             lambda c: (c.linear_qkv_dim, 1, c.linear_conv_kernel_dim), chain(squeeze_conv1d, v["conv"]),
             f32=True, layers=lin, gguf_shape=lambda c: (c.linear_qkv_dim, c.linear_conv_kernel_dim)),
        # The gated output norm computes x_hat * w * silu(z): no +1.
        Rule(f"{BLK}.linear_attn.norm.weight", "blk.{bid}.ssm_norm.weight", lambda c: (c.linear_value_head_dim,),
             f32=True, layers=lin),
        Rule(f"{BLK}.linear_attn.out_proj.weight", "blk.{bid}.ssm_out.weight", lambda c: (H, c.linear_v_dim),
             v["cols"], layers=lin),
    )


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: where it comes from, what it becomes, and how."""

    hf_name: str
    gguf_name: str
    source: TensorRef
    gguf_shape: tuple[int, ...]
    transform: Transform
    f32: bool
    bid: int | None


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$")


def plan_tensors(tensors: Iterable[TensorRef], rules: tuple[Rule, ...], c: TextConfig,
                 skip_prefixes: tuple[str, ...] = SKIP_PREFIXES) -> tuple[list[PlannedTensor], list[str]]:
    """Map every checkpoint tensor by exactly one rule, in GGUF-friendly order.

    Returns:
        (planned tensors, names skipped on purpose)
    Raises:
        TensorMapError: listing every unmapped tensor, tensor in the wrong layer type or block range,
            shape that disagrees with config.json, and required tensor that is missing.
    """
    compiled = [(rule, _compile(rule.hf)) for rule in rules]
    planned: list[PlannedTensor] = []
    skipped, problems = [], []
    for ref in tensors:
        if ref.name.startswith(skip_prefixes):
            skipped.append(ref.name)
            continue
        hits = [(rule, m) for rule, m in ((r, p.match(ref.name)) for r, p in compiled) if m]
        if len(hits) != 1:
            problems.append(f"{ref.name}: {'no rule maps it' if not hits else 'matched by several rules'}")
            continue
        rule, m = hits[0]
        bid = int(m.group("bid")) if "bid" in m.groupdict() else None
        if bid is not None and not (0 <= bid < c.num_hidden_layers):
            problems.append(f"{ref.name}: layer {bid} is outside num_hidden_layers={c.num_hidden_layers}")
            continue
        if bid is not None and rule.layers != "all" and c.layer_types[bid] != rule.layers:
            problems.append(f"{ref.name}: layer {bid} is {c.layer_types[bid]} in config.json")
            continue
        if ref.shape != rule.shape(c):
            problems.append(f"{ref.name}: shape {ref.shape}, config.json implies {rule.shape(c)}")
            continue
        gguf_shape = rule.gguf_shape(c) if rule.gguf_shape else ref.shape
        planned.append(PlannedTensor(ref.name, rule.gguf.format(bid=bid), ref, gguf_shape, rule.transform, rule.f32, bid))
    present = {p.hf_name for p in planned}
    for rule in rules:
        bids = [None] if "{bid}" not in rule.hf else [
            b for b in range(c.num_hidden_layers) if rule.layers in ("all", c.layer_types[b])]
        problems += [f"{rule.hf.format(bid=b)}: missing" for b in bids
                     if not rule.optional and rule.hf.format(bid=b) not in present]
    if problems:
        raise TensorMapError(f"{len(problems)} tensor problem(s): " + "; ".join(problems))
    # Global tensors first, then blocks in order, as llama.cpp's own files are laid out.
    planned.sort(key=lambda p: (p.bid is not None, p.bid or 0, p.gguf_name))
    return planned, skipped
