"""The LM GGUF's key/value metadata as data: (key, value, GGUF type) rows, typed as llama.cpp reads them.

llama.cpp throws "key has wrong type" on a scalar of the wrong type, so every row names its type.
"""

from __future__ import annotations

from gguf import GGUFValueType as T

from ..checkpoint import TextConfig
from ..gguf_io import KV
from ..spec import LM_ARCH
from .vocab import Vocab


def lm_hparams(c: TextConfig) -> list[KV]:
    """Hyperparameter keys of the qwen35 architecture (src/models/qwen35.cpp, llama-model.cpp)."""
    a = LM_ARCH
    return [
        # MTP heads are not exported, so the block count is the plain layer count (see tensor_map).
        KV(f"{a}.block_count", c.num_hidden_layers, T.UINT32),
        KV(f"{a}.context_length", c.max_position_embeddings, T.UINT32),
        KV(f"{a}.embedding_length", c.hidden_size, T.UINT32),
        KV(f"{a}.feed_forward_length", c.intermediate_size, T.UINT32),
        KV(f"{a}.attention.head_count", c.num_attention_heads, T.UINT32),
        KV(f"{a}.attention.head_count_kv", c.num_key_value_heads, T.UINT32),
        # head_dim is not hidden/heads (256 vs 128 in the released model): write it out.
        KV(f"{a}.attention.key_length", c.head_dim, T.UINT32),
        KV(f"{a}.attention.value_length", c.head_dim, T.UINT32),
        KV(f"{a}.attention.layer_norm_rms_epsilon", c.rms_norm_eps, T.FLOAT32),
        KV(f"{a}.rope.freq_base", c.rope_theta, T.FLOAT32),
        # Partial rotary: only the first head_dim * partial_rotary_factor dims rotate.
        KV(f"{a}.rope.dimension_count", c.rope_dim, T.UINT32),
        KV(f"{a}.rope.dimension_sections", [*c.mrope_section, *[0] * (4 - len(c.mrope_section))], T.ARRAY, T.INT32),
        KV(f"{a}.ssm.conv_kernel", c.linear_conv_kernel_dim, T.UINT32),
        KV(f"{a}.ssm.state_size", c.linear_key_head_dim, T.UINT32),
        KV(f"{a}.ssm.group_count", c.linear_num_key_heads, T.UINT32),
        KV(f"{a}.ssm.time_step_rank", c.linear_num_value_heads, T.UINT32),
        KV(f"{a}.ssm.inner_size", c.linear_v_dim, T.UINT32),
        KV(f"{a}.full_attention_interval", c.full_attention_interval, T.UINT32),
        # Explicit per-layer pattern, so an irregular layer_types list is honoured too.
        KV(f"{a}.attention.recurrent_layers", [t == "linear_attention" for t in c.layer_types], T.ARRAY, T.BOOL),
    ]


def tokenizer_kvs(v: Vocab) -> list[KV]:
    """The tokenizer section: byte-level BPE ('gpt2') with the qwen35 pre-tokenizer."""
    rows = [
        KV("tokenizer.ggml.model", "gpt2", T.STRING),
        KV("tokenizer.ggml.pre", v.pre, T.STRING),
        KV("tokenizer.ggml.tokens", v.tokens, T.ARRAY, T.STRING),
        KV("tokenizer.ggml.token_type", v.token_types, T.ARRAY, T.INT32),
        KV("tokenizer.ggml.merges", v.merges, T.ARRAY, T.STRING),
    ]
    key = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
    rows += [KV(f"tokenizer.ggml.{key[k]}", i, T.UINT32) for k, i in v.special_ids.items()]
    rows += [
        KV("tokenizer.ggml.add_bos_token", v.add_bos, T.BOOL),
        KV("tokenizer.ggml.add_eos_token", False, T.BOOL),
        KV("tokenizer.chat_template", v.chat_template, T.STRING),
    ]
    return rows
