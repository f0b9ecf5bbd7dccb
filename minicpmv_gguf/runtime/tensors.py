"""A GGUF header's hyperparameters, checked for what the native graphs divide and reshape by, and its
tensor set checked against what llama.cpp's qwen35 loader and libmtmd's minicpmv4_6 graph use.

Each function returns problems (short phrases naming a key or a tensor), never raises: the caller
joins them into one ModelLoadError naming the file, and `inspect` lists them.
"""

from __future__ import annotations

from ..checkpoint import TextConfig
from ..convert_hf_to_gguf.tensor_map import expected_lm_tensors
from ..gguf_io import ArraySummary, GGUFHeader
from ..mmproj.config import VisionConfig
from ..mmproj.tensor_map import expected_mmproj_tensors
from ..spec import LM_ARCH, POSITION_GRID
from ..tensor_check import tensor_problems

MMPROJ_USER = "libmtmd's minicpmv4_6 graph"
LM_USER = "llama.cpp's qwen35 loader"
NEWLINE = "Ċ".encode()  # "\n" as byte-level BPE spells it
_MAX_DIM = 1 << 20  # no width of this model family comes near; beyond it a flipped bit, not a model


def _int(header: GGUFHeader, key: str, problems: list[str], default: int | None = None) -> int:
    value = header.kvs.get(key, default)
    if type(value) is not int or not 0 < value <= _MAX_DIM:
        problems.append(f"{key}: {'missing' if value is None else f'{value!r} is not a positive size'}")
        return 1
    return value


def _array(header: GGUFHeader, key: str) -> ArraySummary | None:
    value = header.kvs.get(key)
    return value if isinstance(value, ArraySummary) else None


def vision_config(header: GGUFHeader, problems: list[str]) -> VisionConfig:
    """The mmproj's hyperparameters as the converter's VisionConfig; bad sizes are added to `problems`."""
    get = lambda key: _int(header, f"clip.vision.{key}", problems)  # noqa: E731
    width, heads, patch = get("embedding_length"), get("attention.head_count"), get("patch_size")
    if width % heads:
        problems.append(f"clip.vision.attention.head_count: {heads} heads do not divide the width {width}")
    image_size = get("image_size")
    if image_size % patch:
        problems.append(f"clip.vision.image_size: {image_size} is not a whole number of {patch}-pixel patches")
    wa = _array(header, "clip.vision.wa_layer_indexes")
    return VisionConfig(
        hidden_size=width,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=min(get("block_count"), 4096),
        num_attention_heads=heads,
        num_channels=3,  # libmtmd feeds RGB
        patch_size=patch,
        position_grid=POSITION_GRID,
        layer_norm_eps=float(header.kvs.get("clip.vision.attention.layer_norm_epsilon", 0.0)),
        insert_layer_id=wa.head[0] if wa and wa.head else 0,
        text_hidden_size=get("projection_dim"),
        scale_resolution=image_size,
        image_mean=(),
        image_std=(),
    )


def mmproj_problems(header: GGUFHeader, mode: str) -> list[str]:
    """What in an mmproj header (read with its arrays) libmtmd's minicpmv4_6 graph for `mode` cannot run."""
    problems: list[str] = []
    c = vision_config(header, problems)
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        if (arr := _array(header, key)) is not None and arr.length < 3:
            problems.append(f"{key}: {arr.length} values, libmtmd needs 3")
    if problems:  # the expected shapes would be built on a bad size
        return problems
    return tensor_problems(header.tensors, expected_mmproj_tensors(c, mode), MMPROJ_USER)


def text_config(header: GGUFHeader, problems: list[str]) -> TextConfig:
    """The LM's hyperparameters as the converter's TextConfig; bad sizes are added to `problems`."""
    get = lambda key, default=None: _int(header, f"{LM_ARCH}.{key}", problems, default)  # noqa: E731
    n_layer, width, heads = get("block_count"), get("embedding_length"), get("attention.head_count")
    head_k, head_v = get("attention.key_length", width // heads or 1), get("attention.value_length", 0)
    if head_v != head_k:  # llama.cpp's qwen35 graph asserts they are equal
        problems.append(f"{LM_ARCH}.attention.value_length: {head_v}, llama.cpp needs key_length ({head_k})")
    d_state, groups, v_heads = get("ssm.state_size"), get("ssm.group_count"), get("ssm.time_step_rank")
    if v_heads % groups:  # llama.cpp's Gated-DeltaNet asserts value heads are whole groups of key heads
        problems.append(f"{LM_ARCH}.ssm.time_step_rank: {v_heads} value heads are not a multiple of {groups} groups")
    if get("ssm.inner_size") != d_state * v_heads:
        problems.append(f"{LM_ARCH}.ssm.inner_size: expected state_size x time_step_rank = {d_state * v_heads}")
    if get("rope.dimension_count", head_k) > head_k:
        problems.append(f"{LM_ARCH}.rope.dimension_count: more than the head width {head_k}")
    tokens = _array(header, "tokenizer.ggml.tokens")
    return TextConfig(
        hidden_size=width,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=min(n_layer, 4096),
        num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv"),
        head_dim=head_k,
        rms_norm_eps=0.0,
        max_position_embeddings=0,
        vocab_size=tokens.length if tokens else 0,
        layer_types=_layer_types(header, min(n_layer, 4096), problems),
        full_attention_interval=0,
        linear_conv_kernel_dim=get("ssm.conv_kernel"),
        linear_key_head_dim=d_state,
        linear_value_head_dim=d_state,  # llama.cpp sizes value heads by the state size too
        linear_num_key_heads=groups,
        linear_num_value_heads=v_heads,
        rope_theta=0.0,
        partial_rotary_factor=0.0,
        mrope_section=(),
        tie_word_embeddings=False,
        mtp_num_hidden_layers=0,
    )


def _layer_types(header: GGUFHeader, n_layer: int, problems: list[str]) -> tuple[str, ...]:
    """Per block, "linear_attention" or "full_attention", as llama.cpp reads them (recurrent flags, else interval)."""
    flags = _array(header, f"{LM_ARCH}.attention.recurrent_layers")
    if flags is not None:
        if flags.length != n_layer or len(flags.head) != n_layer or flags.type != "BOOL":
            problems.append(
                f"{LM_ARCH}.attention.recurrent_layers: {flags.length} {flags.type} values for {n_layer} blocks"
            )
            return ("full_attention",) * n_layer
        recurrent = list(flags.head)
    else:
        interval = _int(header, f"{LM_ARCH}.full_attention_interval", problems, 4)
        recurrent = [(i + 1) % interval != 0 for i in range(n_layer)]
    return tuple("linear_attention" if r else "full_attention" for r in recurrent)


def vocab_problems(header: GGUFHeader, tokens: list[bytes]) -> list[str]:
    """What in the vocabulary llama.cpp's BPE loader asserts on (it aborts instead of refusing)."""
    if (model := header.kvs.get("tokenizer.ggml.model")) != "gpt2":
        return [f"tokenizer.ggml.model: {model!r}, expected 'gpt2' (byte-level BPE)"]
    if not tokens:
        return ["tokenizer.ggml.tokens: missing, or not an array of strings"]
    problems = []
    first: dict[bytes, int] = {}
    for i, token in enumerate(tokens):
        if token in first:
            problems.append(f"tokenizer.ggml.tokens: token {i} repeats token {first[token]} ({token[:40]!r})")
            break
        first[token] = i
    if NEWLINE not in first:
        problems.append("tokenizer.ggml.tokens: no newline token ('Ċ'), which llama.cpp requires")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if (arr := header.kvs.get(key)) is not None and (
            not isinstance(arr, ArraySummary) or arr.length != len(tokens)
        ):
            length = arr.length if isinstance(arr, ArraySummary) else "not an array"
            problems.append(f"{key}: {length} values for {len(tokens)} tokens")
    return problems


def lm_problems(header: GGUFHeader, tokens: list[bytes] = ()) -> list[str]:
    """What in an LM header (read with its arrays) and its `tokens` llama.cpp's qwen35 loader would refuse
    or its graph abort on."""
    problems = vocab_problems(header, list(tokens))
    c = text_config(header, problems)
    if problems:
        return problems
    return tensor_problems(header.tensors, expected_lm_tensors(c), LM_USER)


def summary(problems: list[str], limit: int = 12) -> str:
    """The problems on one line, the first `limit` of them."""
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
