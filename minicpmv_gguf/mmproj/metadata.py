"""The mmproj GGUF's clip.* keys as data. clip.cpp asserts every scalar's exact type (a wrong one aborts)."""

from __future__ import annotations

from gguf import GGUFValueType as T

from ..gguf_io import KV
from ..spec import MODES, PROJECTOR
from .config import VisionConfig

ARCH = "clip"


def clip_kvs(c: VisionConfig, mode: str, *, ffn_width: int | None = None) -> list[KV]:
    """clip.* keys for one downsample mode (tools/mtmd/clip.cpp load_hparams).

    ffn_width: the MLP width the tensors have (zero-padded for a block type); default intermediate_size.
    """
    return [
        KV("clip.projector_type", PROJECTOR, T.STRING),
        KV("clip.has_vision_encoder", True, T.BOOL),
        # SigLIP's gelu_pytorch_tanh; without this key clip.cpp would use gelu_quick.
        KV("clip.use_gelu", True, T.BOOL),
        KV("clip.vision.projection_dim", c.text_hidden_size, T.UINT32),
        # The processor's slice size (448 released), not vision_config.image_size (980): it drives slicing.
        KV("clip.vision.image_size", c.scale_resolution, T.UINT32),
        KV("clip.vision.patch_size", c.patch_size, T.UINT32),
        KV("clip.vision.embedding_length", c.hidden_size, T.UINT32),
        # libmtmd takes the width from the tensors; the key says the same (padded) width.
        KV("clip.vision.feed_forward_length", ffn_width or c.intermediate_size, T.UINT32),
        KV("clip.vision.block_count", c.num_hidden_layers, T.UINT32),
        KV("clip.vision.attention.head_count", c.num_attention_heads, T.UINT32),
        KV("clip.vision.attention.layer_norm_epsilon", c.layer_norm_eps, T.FLOAT32),
        KV("clip.vision.image_mean", list(c.image_mean), T.ARRAY, T.FLOAT32),
        KV("clip.vision.image_std", list(c.image_std), T.ARRAY, T.FLOAT32),
        # The mode lives in the file: n_merge 4 (16x tokens fewer) or 2 (4x).
        KV("clip.vision.projector.scale_factor", MODES[mode], T.UINT32),
        # llama.cpp borrows wa_layer_indexes for the vit_merger insertion layer.
        KV("clip.vision.wa_layer_indexes", [c.insert_layer_id], T.ARRAY, T.INT32),
    ]
