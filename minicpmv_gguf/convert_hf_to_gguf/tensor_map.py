"""The HF -> GGUF tensor table of the MiniCPM-V 4.6 language model (llama.cpp arch `qwen35`).

One Rule per tensor kind, `{bid}` for the block index; expected shapes come from config.json.
`tensor_plan.plan_tensors` applies the table exhaustively.
"""

from __future__ import annotations

from ..checkpoint import TextConfig
from ..tensor_check import Expected, expected_from_rules
from ..tensor_plan import Rule
from .transforms import add_one, chain, neg_exp, squeeze_conv1d, v_head_reorders

LM = "model.language_model"
BLK = LM + ".layers.{bid}"

# Prefixes of tensors the LM GGUF leaves out on purpose: the vision half goes to the mmproj GGUF,
# and MTP (multi-token prediction) heads are not exported (block_count = num_hidden_layers).
SKIP_PREFIXES = ("model.vision_tower.", "model.merger.", "mtp.", LM + ".mtp.")


def lm_rules(c: TextConfig) -> tuple[Rule, ...]:
    """The table, with the config-dependent value-head reorder bound in."""
    v = v_head_reorders(c.linear_num_key_heads, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_k_dim)
    H, lin, full = c.hidden_size, "linear_attention", "full_attention"
    return (
        Rule(f"{LM}.embed_tokens.weight", "token_embd.weight", lambda c: (c.vocab_size, H)),
        Rule("lm_head.weight", "output.weight", lambda c: (c.vocab_size, H), optional=True),
        Rule(f"{LM}.norm.weight", "output_norm.weight", lambda c: (H,), add_one, dtype="f32"),
        Rule(f"{BLK}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", lambda c: (H,), add_one, dtype="f32"),
        Rule(
            f"{BLK}.post_attention_layernorm.weight",
            "blk.{bid}.post_attention_norm.weight",
            lambda c: (H,),
            add_one,
            dtype="f32",
        ),
        Rule(f"{BLK}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", lambda c: (c.intermediate_size, H)),
        Rule(f"{BLK}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", lambda c: (c.intermediate_size, H)),
        Rule(f"{BLK}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", lambda c: (H, c.intermediate_size)),
        # Gated full attention: q_proj rows stay [q_h0, gate_h0, q_h1, ...], as llama.cpp views them.
        Rule(f"{BLK}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", lambda c: (c.q_gate_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", lambda c: (c.kv_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", lambda c: (c.kv_dim, H), layers=full),
        Rule(f"{BLK}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", lambda c: (H, c.attn_dim), layers=full),
        Rule(
            f"{BLK}.self_attn.q_norm.weight",
            "blk.{bid}.attn_q_norm.weight",
            lambda c: (c.head_dim,),
            add_one,
            dtype="f32",
            layers=full,
        ),
        Rule(
            f"{BLK}.self_attn.k_norm.weight",
            "blk.{bid}.attn_k_norm.weight",
            lambda c: (c.head_dim,),
            add_one,
            dtype="f32",
            layers=full,
        ),
        # Gated DeltaNet linear attention.
        Rule(
            f"{BLK}.linear_attn.in_proj_qkv.weight",
            "blk.{bid}.attn_qkv.weight",
            lambda c: (c.linear_qkv_dim, H),
            v["qkv"],
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.in_proj_z.weight",
            "blk.{bid}.attn_gate.weight",
            lambda c: (c.linear_v_dim, H),
            v["rows"],
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.in_proj_b.weight",
            "blk.{bid}.ssm_beta.weight",
            lambda c: (c.linear_num_value_heads, H),
            v["heads"],
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.in_proj_a.weight",
            "blk.{bid}.ssm_alpha.weight",
            lambda c: (c.linear_num_value_heads, H),
            v["heads"],
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.A_log",
            "blk.{bid}.ssm_a",
            lambda c: (c.linear_num_value_heads,),
            chain(neg_exp, v["heads"]),
            dtype="f32",
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.dt_bias",
            "blk.{bid}.ssm_dt.bias",
            lambda c: (c.linear_num_value_heads,),
            v["heads"],
            dtype="f32",
            layers=lin,
        ),
        # ggml_ssm_conv reads F32 only.
        Rule(
            f"{BLK}.linear_attn.conv1d.weight",
            "blk.{bid}.ssm_conv1d.weight",
            lambda c: (c.linear_qkv_dim, 1, c.linear_conv_kernel_dim),
            chain(squeeze_conv1d, v["conv"]),
            dtype="f32",
            layers=lin,
            gguf_shape=lambda c: (c.linear_qkv_dim, c.linear_conv_kernel_dim),
        ),
        # The gated output norm computes x_hat * w * silu(z): no +1.
        Rule(
            f"{BLK}.linear_attn.norm.weight",
            "blk.{bid}.ssm_norm.weight",
            lambda c: (c.linear_value_head_dim,),
            dtype="f32",
            layers=lin,
        ),
        Rule(
            f"{BLK}.linear_attn.out_proj.weight",
            "blk.{bid}.ssm_out.weight",
            lambda c: (H, c.linear_v_dim),
            v["cols"],
            layers=lin,
        ),
    )


def expected_lm_tensors(c: TextConfig) -> dict[str, Expected]:
    """The tensors llama.cpp's qwen35 loader builds for these hyperparameters: exactly what this table writes."""
    kinds = tuple(c.layer_types)
    return expected_from_rules(lm_rules(c), c, kinds)
