"""The HF -> GGUF tensor table of the MiniCPM-V 4.6 vision half (clip projector `minicpmv4_6`).

clip.cpp's graph takes the HF weights as they are, with one exception: a block type (Q8_0, Q4_K, ...)
needs rows that are whole blocks, and SigLIP2's MLP width (4304) is not a multiple of 32. So the MLP
width may be zero-padded: fc1 gains zero rows and zero bias, fc2 zero columns. The padded hidden units
are GELU(0) = 0 and meet zero weights anyway, so the output is unchanged (tested against the unpadded
file and transformers). gguf 0.19 has none of these names for this projector, so they are written out
here (tools/mtmd/clip-impl.h TN_* names).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..tensor_check import Expected, expected_from_rules
from ..tensor_plan import Rule, Shape
from .config import VisionConfig

V = "model.vision_tower"
BLK = V + ".encoder.layers.{bid}"
MERGER = "model.merger.mlp.0"

SKIP_PREFIXES = ("model.language_model.", "lm_head.", "mtp.")
SKIP_4X = (V + ".vit_merger.",)  # 4x mode never runs the window-attention merger


def _weight_bias(hf: str, gguf: str, weight: Shape, bias: Shape, *, weight_dtype: str = "outtype") -> tuple[Rule, Rule]:
    return (
        Rule(f"{hf}.weight", f"{gguf}.weight", weight, dtype=weight_dtype),
        Rule(f"{hf}.bias", f"{gguf}.bias", bias, dtype="f32"),
    )


def _norm(hf: str, gguf: str, width: Shape) -> tuple[Rule, Rule]:
    return _weight_bias(hf, gguf, width, width, weight_dtype="f32")


def _linear(hf: str, gguf: str, out_in: Shape) -> tuple[Rule, Rule]:
    return _weight_bias(hf, gguf, out_in, lambda c: out_in(c)[:1])


def padded_width(n: int, block: int) -> int:
    """n rounded up to a whole number of blocks."""
    return -(-n // block) * block


def pad_rows(w: np.ndarray, n: int) -> np.ndarray:
    """Append zero rows (axis 0) up to n: fc1's weight and bias gain hidden units that are always 0."""
    return np.concatenate([w, np.zeros((n - w.shape[0], *w.shape[1:]), w.dtype)]) if n > w.shape[0] else w


def pad_cols(w: np.ndarray, n: int) -> np.ndarray:
    """Append zero columns (last axis) up to n: fc2 ignores the padded hidden units."""
    return np.concatenate([w, np.zeros((*w.shape[:-1], n - w.shape[-1]), w.dtype)], axis=-1) if n > w.shape[-1] else w


def _mlp(
    up: str, down: str, gguf: str, width: Shape, d_in: Shape, d_out: Shape, padded: int | None
) -> tuple[Rule, ...]:
    """`up` (d_in -> width) and `down` (width -> d_out) linears, zero-padded to `padded` hidden units when given."""
    up_w, up_b = _linear(up, f"{gguf}_up", lambda c: (width(c), d_in(c)))
    down_w, down_b = _linear(down, f"{gguf}_down", lambda c: (d_out(c), width(c)))
    if padded is None:
        return up_w, up_b, down_w, down_b

    def padded_rule(r: Rule, transform, shape: Shape) -> Rule:
        return Rule(r.hf, r.gguf, r.shape, transform=partial(transform, n=padded), dtype=r.dtype, gguf_shape=shape)

    return (
        padded_rule(up_w, pad_rows, lambda c: (padded, d_in(c))),
        padded_rule(up_b, pad_rows, lambda c: (padded,)),
        padded_rule(down_w, pad_cols, lambda c: (d_out(c), padded)),
        down_b,
    )


def mmproj_rules(mode: str, ffn: int | None = None, merger_ffn: int | None = None) -> tuple[Rule, ...]:
    """The table for one downsample mode; 16x adds the window-attention merger.

    ffn, merger_ffn: zero-pad the encoder's MLP width / the window merger's (4 x the MLP width) to
    this many hidden units; None writes them as they are.
    """
    D = lambda c: (c.hidden_size,)  # noqa: E731 - shape tables read better as lambdas
    D1 = lambda c: c.hidden_size  # noqa: E731
    D1x4 = lambda c: 4 * c.hidden_size  # noqa: E731
    DD = lambda c: (c.hidden_size, c.hidden_size)  # noqa: E731
    D4 = lambda c: (4 * c.hidden_size,)  # noqa: E731 - a 2x2 merge concatenates 4 tokens
    rules = [
        # ggml's conv2d takes an F16 or F32 kernel.
        *_weight_bias(
            f"{V}.embeddings.patch_embedding",
            "v.patch_embd",
            lambda c: (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
            D,
            weight_dtype="f16|f32",
        ),
        # Kept as the full 70x70 table: clip.cpp looks positions up in it by bucket, never interpolated.
        Rule(
            f"{V}.embeddings.position_embedding.weight",
            "v.position_embd.weight",
            lambda c: (c.position_grid**2, c.hidden_size),
            dtype="f32",
        ),
        *_norm(f"{BLK}.layer_norm1", "v.blk.{bid}.ln1", D),
        *_linear(f"{BLK}.self_attn.q_proj", "v.blk.{bid}.attn_q", DD),
        *_linear(f"{BLK}.self_attn.k_proj", "v.blk.{bid}.attn_k", DD),
        *_linear(f"{BLK}.self_attn.v_proj", "v.blk.{bid}.attn_v", DD),
        *_linear(f"{BLK}.self_attn.out_proj", "v.blk.{bid}.attn_out", DD),
        *_norm(f"{BLK}.layer_norm2", "v.blk.{bid}.ln2", D),
        *_mlp(f"{BLK}.mlp.fc1", f"{BLK}.mlp.fc2", "v.blk.{bid}.ffn", lambda c: c.intermediate_size, D1, D1, ffn),
        *_norm(f"{V}.post_layernorm", "v.post_ln", D),
        *_norm(f"{MERGER}.pre_norm", "mm.input_norm", D4),
        *_linear(f"{MERGER}.linear_1", "mm.up", lambda c: (4 * c.hidden_size, 4 * c.hidden_size)),
        # mm.down's width must equal the LM's embedding width: libmtmd checks it when loading.
        *_linear(f"{MERGER}.linear_2", "mm.down", lambda c: (c.text_hidden_size, 4 * c.hidden_size)),
    ]
    if mode == "16x":
        M = f"{V}.vit_merger"
        rules += [
            *_norm(f"{M}.layer_norm1", "v.vit_merger.ln1", D),
            *_linear(f"{M}.self_attn.q_proj", "v.vit_merger.attn_q", DD),
            *_linear(f"{M}.self_attn.k_proj", "v.vit_merger.attn_k", DD),
            *_linear(f"{M}.self_attn.v_proj", "v.vit_merger.attn_v", DD),
            *_linear(f"{M}.self_attn.out_proj", "v.vit_merger.attn_out", DD),
            *_norm(f"{M}.pre_norm", "v.vit_merger.ds_ln", D4),
            *_mlp(
                f"{M}.linear_1",
                f"{M}.linear_2",
                "v.vit_merger.ds_ffn",
                lambda c: 4 * c.intermediate_size,
                D1x4,
                D1,
                merger_ffn,
            ),
        ]
    return tuple(rules)


def mmproj_skip_prefixes(mode: str) -> tuple[str, ...]:
    return SKIP_PREFIXES + (SKIP_4X if mode == "4x" else ())


def expected_mmproj_tensors(c: VisionConfig, mode: str) -> dict[str, Expected]:
    """The tensors libmtmd's minicpmv4_6 loader and graph use for one mode: exactly what this table writes."""
    return expected_from_rules(mmproj_rules(mode), c, ("all",) * c.num_hidden_layers)
