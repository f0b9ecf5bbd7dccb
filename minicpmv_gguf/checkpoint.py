"""A local MiniCPM-V 4.6 Hugging Face checkpoint: config.json, the safetensors index, tokenizer files.

Reads only headers and JSON; tensor bytes are read later, one chunk at a time (`safetensors_io`).
Config values are validated into frozen dataclasses so that a wrong type fails here, not in llama.cpp.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .safetensors_io import TensorRef, read_header
from .spec import HF_MODEL_TYPE

log = logging.getLogger(__name__)

ARCHITECTURE = "MiniCPMV4_6ForConditionalGeneration"
INDEX_FILE = "model.safetensors.index.json"

# Keys that transformers' Qwen3_5TextConfig fills with a class default when absent.
TEXT_DEFAULTS: dict[str, Any] = {
    "full_attention_interval": 4,
    "partial_rotary_factor": 0.25,
    "mrope_section": [11, 11, 10],
    "tie_word_embeddings": True,
    "mtp_num_hidden_layers": 0,
}


@dataclass(frozen=True)
class TextConfig:
    """The Qwen3.5 language model's hyperparameters (transformers' names)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    vocab_size: int
    layer_types: tuple[str, ...]
    full_attention_interval: int
    linear_conv_kernel_dim: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...]
    tie_word_embeddings: bool
    mtp_num_hidden_layers: int

    # Derived widths, named for the tensors they size.
    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_k_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_v_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_qkv_dim(self) -> int:
        return 2 * self.linear_k_dim + self.linear_v_dim

    @property
    def q_gate_dim(self) -> int:
        return 2 * self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def attn_dim(self) -> int:
        return self.num_attention_heads * self.head_dim


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint directory holds, validated, with no tensor data loaded."""

    path: Path
    config: dict[str, Any]
    text: TextConfig
    tensors: dict[str, TensorRef]


def read_json(path: Path) -> Any:
    """JSON file contents, or a CheckpointError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def open_checkpoint(path: Path) -> Checkpoint:
    """Read and validate config.json and every safetensors header of a checkpoint directory.

    Raises:
        CheckpointError: not a directory, missing or malformed config.json, another architecture,
            missing shards, corrupt or truncated safetensors files.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'}: not a JSON object")
    archs = config.get("architectures") or [config.get("model_type")]
    archs = archs if isinstance(archs, list) else [archs]
    if ARCHITECTURE not in archs and config.get("model_type") != HF_MODEL_TYPE:
        raise CheckpointError(f"{path / 'config.json'}: architecture {archs} is not {ARCHITECTURE} (MiniCPM-V 4.6)")
    return Checkpoint(path, config, parse_text_config(config, path / "config.json"), read_tensor_index(path))


def read_tensor_index(path: Path) -> dict[str, TensorRef]:
    """Every tensor of a single-file or sharded checkpoint, checked against the index when sharded."""
    index_path = path / INDEX_FILE
    if index_path.exists():
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        bad = next(
            (s for s in weight_map.values() if not isinstance(s, str) or Path(s).name != s or s in ("", ".", "..")),
            None,
        )
        if bad is not None:  # a shard is a file of this directory: no paths, no other types
            raise CheckpointError(f"{index_path}: weight_map names {bad!r}, not a file name in {path}")
        shards = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").exists():
        weight_map, shards = None, ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or {INDEX_FILE}")
    tensors: dict[str, TensorRef] = {}
    for shard in shards:
        shard_path = path / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{shard_path}: shard named in {INDEX_FILE} is missing")
        for name, ref in read_header(shard_path).items():
            if name in tensors:
                raise CheckpointError(f"{shard_path}: tensor {name!r} is also in {tensors[name].path.name}")
            tensors[name] = ref
    if weight_map is not None:
        moved = sorted(
            f"{n} is in {tensors[n].path.name}, not {s}"
            for n, s in weight_map.items()
            if n in tensors and tensors[n].path.name != s
        )
        if moved:
            raise CheckpointError(f"{index_path}: does not match the shards: {_few(moved)}")
        missing = sorted(n for n in weight_map if n not in tensors)
        extra = sorted(set(tensors) - set(weight_map))
        if missing or extra:
            raise CheckpointError(
                f"{index_path}: does not match the shards: missing {_few(missing)}, not indexed {_few(extra)}"
            )
    return tensors


def _few(names: list[str], n: int = 5) -> str:
    return "none" if not names else ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def parse_text_config(config: dict[str, Any], where: Path) -> TextConfig:
    """Validate text_config (types included) into a TextConfig."""
    tc = config.get("text_config")
    if not isinstance(tc, dict):
        raise CheckpointError(f"{where}: no text_config object")
    rope = tc.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{where}: text_config.rope_parameters is not an object")
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"{where}: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
    merged = {**TEXT_DEFAULTS, **{k: v for k, v in rope.items() if k in TEXT_DEFAULTS}, **tc}
    merged.setdefault("rope_theta", rope.get("rope_theta"))
    defaulted = [f"{k}={v!r}" for k, v in TEXT_DEFAULTS.items() if k not in tc and k not in rope]
    if defaulted:
        log.debug("%s: text_config lacks %s: using transformers' defaults", where, ", ".join(defaulted))

    def get(key: str, kind: type) -> Any:
        value = merged.get(key)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and type(value) is int and abs(value) < 1e38:
            value, ok = float(value), True
        if kind is float and ok and not (math.isfinite(value) and abs(value) < 1e38):  # GGUF stores F32
            raise CheckpointError(f"{where}: text_config.{key}: {value!r} is not a finite float32")
        if not ok:
            problem = "missing" if value is None else f"{value!r} is not {kind.__name__}"
            raise CheckpointError(f"{where}: text_config.{key}: {problem}")
        return value

    n_layers = get("num_hidden_layers", int)
    interval = get("full_attention_interval", int)
    layer_types = merged.get("layer_types") or [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)
    ]
    if (
        not isinstance(layer_types, list)
        or len(layer_types) != n_layers
        or not all(t in ("full_attention", "linear_attention") for t in layer_types)
    ):
        raise CheckpointError(
            f"{where}: text_config.layer_types must list {n_layers} 'linear_attention'/'full_attention' entries"
        )
    section = get("mrope_section", list)
    if not all(type(s) is int and 0 <= s < 2**31 for s in section) or len(section) > 4:
        raise CheckpointError(f"{where}: text_config.mrope_section {section!r} is not a list of up to 4 ints")
    text = TextConfig(
        **{
            k: get(k, int)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "max_position_embeddings",
                "vocab_size",
                "linear_conv_kernel_dim",
                "linear_key_head_dim",
                "linear_value_head_dim",
                "linear_num_key_heads",
                "linear_num_value_heads",
                "mtp_num_hidden_layers",
            )
        },
        num_hidden_layers=n_layers,
        full_attention_interval=interval,
        rms_norm_eps=get("rms_norm_eps", float),
        rope_theta=get("rope_theta", float),
        partial_rotary_factor=get("partial_rotary_factor", float),
        layer_types=tuple(layer_types),
        mrope_section=tuple(section),
        tie_word_embeddings=get("tie_word_embeddings", bool),
    )
    _check_text_config(text, where)
    return text


def _check_text_config(c: TextConfig, where: Path) -> None:
    positive = [
        k for k, v in vars(c).items() if type(v) in (int, float) and (v < 0 if k == "mtp_num_hidden_layers" else v <= 0)
    ]
    if positive:  # first: the checks below divide by some of them
        raise CheckpointError(f"{where}: text_config values must be positive: {', '.join(positive)}")
    too_big = [k for k, v in vars(c).items() if type(v) is int and v >= 2**31]
    if too_big:  # GGUF stores them as 32-bit integers
        raise CheckpointError(f"{where}: text_config values too large (2^31 or more): {', '.join(too_big)}")
    if c.partial_rotary_factor > 1 or c.rope_dim < 2:
        raise CheckpointError(
            f"{where}: partial_rotary_factor {c.partial_rotary_factor} (x head_dim {c.head_dim}): "
            "needs 0 < factor <= 1 and at least 2 rotary dimensions"
        )
    # llama.cpp's qwen35 graph uses one head size (ssm.state_size) for linear keys and values.
    if c.linear_key_head_dim != c.linear_value_head_dim:
        raise CheckpointError(
            f"{where}: linear_key_head_dim {c.linear_key_head_dim} != linear_value_head_dim "
            f"{c.linear_value_head_dim}; llama.cpp's qwen35 needs them equal"
        )
    if c.linear_num_value_heads % c.linear_num_key_heads:
        raise CheckpointError(
            f"{where}: linear_num_value_heads {c.linear_num_value_heads} is not a multiple of "
            f"linear_num_key_heads {c.linear_num_key_heads}"
        )
