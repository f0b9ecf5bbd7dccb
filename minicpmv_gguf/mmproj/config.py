"""The vision tower's hyperparameters, from config.json and the processor config, checked against what
libmtmd's `minicpmv4_6` projector hardcodes (70x70 position grid, 2x2 windows and merges, one merger).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, read_json
from ..errors import CheckpointError
from ..spec import MERGE, MODES, POSITION_GRID, WINDOW

log = logging.getLogger(__name__)

__all__ = ["MODES", "POSITION_GRID", "VisionConfig", "parse_vision_config"]
PROCESSOR_DEFAULTS: dict[str, Any] = {"scale_resolution": 448, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP tower + window-attention merger + final merger, as the mmproj GGUF needs them."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    patch_size: int
    position_grid: int  # vision image_size / patch_size: side of the position table
    layer_norm_eps: float
    insert_layer_id: int  # the vit_merger runs after this encoder layer (16x)
    text_hidden_size: int  # the merger's output width = the LM's embedding width
    scale_resolution: int  # the processor's slice size: clip.vision.image_size
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


def parse_vision_config(ckpt: Checkpoint) -> VisionConfig:
    """Validate vision_config, the merger settings and the processor config into a VisionConfig.

    Raises:
        CheckpointError: a missing or wrong-typed field, or a value libmtmd cannot run.
    """
    where = ckpt.path / "config.json"
    vc = ckpt.config.get("vision_config")
    if not isinstance(vc, dict):
        raise CheckpointError(f"{where}: no vision_config object")

    def get(d: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
        value = d.get(key, default)
        if kind is float and type(value) is int and abs(value) < 1e38:
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise CheckpointError(
                f"{where}: {key}: {'missing' if value is None else f'{value!r} is not {kind.__name__}'}"
            )
        # GGUF stores these as UINT32 / FLOAT32, and none can be zero or negative.
        if not 0 < value < (2**31 if kind is int else 1e38):
            raise CheckpointError(f"{where}: {key}: {value!r} is out of range (a positive {kind.__name__} is needed)")
        return value

    if vc.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise CheckpointError(f"{where}: vision hidden_act {vc['hidden_act']!r}; clip.cpp implements gelu_pytorch_tanh")
    hardcoded = {
        "merge_kernel_size": (ckpt.config, [MERGE, MERGE]),
        "merger_times": (ckpt.config, 1),
        "window_kernel_size": (vc, [WINDOW, WINDOW]),
    }
    for key, (section, want) in hardcoded.items():
        value = section.get(key, want)
        if (list(value) if isinstance(value, (list, tuple)) else value) != want:
            raise CheckpointError(f"{where}: {key} {value!r}; libmtmd hardcodes {want}")
    patch, n_layers = get(vc, "patch_size", int), get(vc, "num_hidden_layers", int)
    image_size = get(vc, "image_size", int)
    if image_size % patch or image_size // patch != POSITION_GRID:
        raise CheckpointError(
            f"{where}: vision image_size {image_size} / patch_size {patch} is not a "
            f"{POSITION_GRID}x{POSITION_GRID} position table; libmtmd assumes one and aborts otherwise"
        )
    insert = ckpt.config.get("insert_layer_id", vc.get("insert_layer_id", 6))
    if type(insert) is not int or not 0 <= insert < n_layers:
        raise CheckpointError(f"{where}: insert_layer_id {insert!r} is not an encoder layer (0..{n_layers - 1})")
    proc = _processor_config(ckpt.path)
    mean, std = proc["image_mean"], proc["image_std"]
    if (
        not all(
            isinstance(x, list) and len(x) == 3 and all(type(v) in (int, float) and abs(v) < 1e38 for v in x)
            for x in (mean, std)
        )
        or min(std) <= 0
    ):
        raise CheckpointError(
            f"{ckpt.path / 'preprocessor_config.json'}: image_mean/image_std must be 3 finite "
            "numbers each, image_std positive"
        )
    return VisionConfig(
        hidden_size=get(vc, "hidden_size", int),
        intermediate_size=get(vc, "intermediate_size", int),
        num_hidden_layers=n_layers,
        num_attention_heads=get(vc, "num_attention_heads", int),
        num_channels=get(vc, "num_channels", int, 3),
        patch_size=patch,
        position_grid=image_size // patch,
        layer_norm_eps=get(vc, "layer_norm_eps", float),
        insert_layer_id=insert,
        text_hidden_size=ckpt.text.hidden_size,
        scale_resolution=get(proc, "scale_resolution", int),
        image_mean=tuple(float(v) for v in mean),
        image_std=tuple(float(v) for v in std),
    )


def _processor_config(path: Path) -> dict[str, Any]:
    """preprocessor_config.json, with processor_config.json's image_processor section on top."""
    merged: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (path / name).is_file():
            data = read_json(path / name)
            if isinstance(data, dict):
                merged.update(data.get("image_processor", data) if name == "processor_config.json" else data)
    absent = {k: v for k, v in PROCESSOR_DEFAULTS.items() if k not in merged}
    if absent:
        log.info("%s: no processor value for %s: using the released model's", path, ", ".join(absent))
    return {**PROCESSOR_DEFAULTS, **merged}
