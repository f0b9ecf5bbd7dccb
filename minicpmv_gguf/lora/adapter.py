"""A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), read and checked without torch.

`open_adapter` validates the config (LoRA only, no DoRA or other PEFT types), every tensor's name, rank and
finiteness, and maps PEFT module names onto the checkpoint's tensor names; `check_against` then checks the
targets exist in the base checkpoint with matching shapes. Every problem is one LoraError naming the file.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, read_json
from ..errors import CheckpointError, LoraError
from ..safetensors_io import TensorRef, read_header, read_tensor

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# PEFT's save_pretrained prefixes the wrapped model's module names with this.
PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
# Config options that change what the tensors mean; we refuse them by name rather than merge them wrongly.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
    "lora_bias": "lora_bias (trained LoRA biases)",
    "use_qalora": "QALoRA",
    "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "aLoRA (activated LoRA: applies only after its invocation tokens)",
    "trainable_token_indices": "trainable_token_indices (trained embedding rows)",
    "layer_replication": "layer_replication",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
}
# Vision-half modules: merged into the mmproj, never into the LM or an adapter GGUF.
VISION_PREFIXES = ("model.vision_tower.", "model.merger.")
LM_PREFIXES = ("model.language_model.", "lm_head")


@dataclass(frozen=True)
class LoraTarget:
    """One adapted linear layer: the checkpoint weight it changes and its A [r, in], B [out, r] factors."""

    weight: str  # the checkpoint tensor name, e.g. model.language_model.layers.0.mlp.up_proj.weight
    a: TensorRef
    b: TensorRef
    rank: int
    alpha: float
    scaling: float  # alpha / r, or alpha / sqrt(r) with rsLoRA; --lora-scale not included

    @property
    def is_vision(self) -> bool:
        return self.weight.startswith(VISION_PREFIXES)


@dataclass(frozen=True)
class Adapter:
    """A validated adapter: its files' sha256, config numbers and targets by checkpoint weight name."""

    path: Path
    sha256: dict[str, str]
    rank: int
    alpha: float
    rslora: bool
    scale: float  # the user's --lora-scale
    targets: dict[str, LoraTarget]

    def factors(self, weight: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(A, B, total scale) in float32 for a checkpoint weight, or None when this adapter leaves it alone."""
        t = self.targets.get(weight)
        if t is None:
            return None
        return read_tensor(t.a), read_tensor(t.b), self.scale * t.scaling

    @property
    def vision_targets(self) -> list[str]:
        return [w for w, t in self.targets.items() if t.is_vision]

    def record(self) -> dict[str, Any]:
        """What a merged file records about the adapter (GGUF general.* and manifest.json)."""
        return {
            "path": str(self.path.resolve()),
            "sha256": dict(self.sha256),
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "scale": self.scale,
            "targets": sorted(self.targets),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pattern(patterns: Any, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: a key matches a module name ending in it (or as a regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_config(path: Path, config: Any) -> dict[str, Any]:
    where = path / CONFIG
    if not isinstance(config, dict):
        raise LoraError(f"{where}: not a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise LoraError(f"{where}: peft_type {kind!r} is not supported (only LORA; not LoHa, LoKr, IA3, AdaLoRA, ...)")
    for flag, name in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise LoraError(f"{where}: {name} is not supported; merge it with PEFT's merge_and_unload() instead")
    if config.get("modules_to_save"):
        raise LoraError(
            f"{where}: modules_to_save {config['modules_to_save']} (fully trained copies of modules) "
            "is not supported; merge it with PEFT instead"
        )
    if config.get("target_parameters"):
        raise LoraError(f"{where}: target_parameters (LoRA on bare parameters) is not supported")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if type(r) is not int or r < 1 or type(alpha) not in (int, float):
        raise LoraError(f"{where}: r must be a positive integer and lora_alpha a number (got {r!r}, {alpha!r})")
    return config


def open_adapter(path: Path, *, scale: float = 1.0) -> Adapter:
    """Read and check a PEFT LoRA adapter directory; tensors are read to check finiteness, then dropped.

    Raises:
        LoraError: missing files, an unsupported PEFT type or option, malformed tensor names, a rank that
            disagrees with config or between A and B, non-finite values.
    """
    path = Path(path)
    if not path.is_dir():
        raise LoraError(f"{path}: not a directory (a PEFT adapter folder holds {CONFIG} and {WEIGHTS})")
    weights = path / WEIGHTS
    if not (path / CONFIG).is_file():
        raise LoraError(f"{path / CONFIG}: missing: not a PEFT adapter folder")
    if not weights.is_file():
        pickled = " (adapter_model.bin is a torch pickle: re-save with safe_serialization=True)"
        raise LoraError(f"{weights}: missing{pickled if (path / 'adapter_model.bin').exists() else ''}")
    try:
        config = _check_config(path, read_json(path / CONFIG))
        refs = read_header(weights)
    except CheckpointError as err:
        raise LoraError(str(err)) from err
    if not math.isfinite(scale):
        raise LoraError(f"{path}: --lora-scale {scale} is not a finite number")
    pairs: dict[str, dict[str, TensorRef]] = {}
    for name, ref in refs.items():
        m = _KEY.match(name)
        if not m or not name.startswith(PEFT_PREFIX):
            raise LoraError(f"{weights}: tensor {name!r} is not a PEFT LoRA factor (…lora_A.weight / …lora_B.weight)")
        pairs.setdefault(m["module"].removeprefix(PEFT_PREFIX), {})[m["ab"]] = ref
    if not pairs:
        raise LoraError(f"{weights}: holds no LoRA tensors")
    rslora = bool(config.get("use_rslora"))
    targets = {}
    for module, ab in sorted(pairs.items()):
        targets[module + ".weight"] = _target(weights, config, module, ab, rslora)
    sha = {f.name: _sha256(f) for f in (path / CONFIG, weights)}
    return Adapter(path, sha, config["r"], float(config["lora_alpha"]), rslora, float(scale), targets)


def _target(weights: Path, config: dict[str, Any], module: str, ab: dict[str, TensorRef], rslora: bool) -> LoraTarget:
    if set(ab) != {"A", "B"}:
        raise LoraError(f"{weights}: {module} has lora_{''.join(ab)} but no lora_{({'A', 'B'} - set(ab)).pop()}")
    a, b = ab["A"], ab["B"]
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise LoraError(f"{weights}: {module}: lora_A {a.shape} and lora_B {b.shape} must be matrices (Linear layers)")
    rank = _pattern(config.get("rank_pattern"), module, config["r"])
    alpha = float(_pattern(config.get("alpha_pattern"), module, config["lora_alpha"]))
    if a.shape[0] != rank or b.shape[1] != rank:
        raise LoraError(
            f"{weights}: {module}: lora_A {a.shape} and lora_B {b.shape} have rank {a.shape[0]}/{b.shape[1]}, "
            f"{CONFIG} says r={rank}"
        )
    for ref in (a, b):
        if not np.isfinite(read_tensor(ref)).all():
            raise LoraError(f"{weights}: tensor {ref.name!r} holds NaN or Inf values")
    scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
    return LoraTarget(module + ".weight", a, b, rank, alpha, scaling)


def check_against(adapters: list[Adapter], ckpt: Checkpoint, *, linear: set[str]) -> None:
    """Every target must be a Linear weight of this checkpoint with A [r, in] and B [out, r] fitting it.

    `linear` names the checkpoint weights a LoRA may change (the 2-D weights of Linear layers).
    Raises:
        LoraError: names and shapes that do not match (an adapter for another base), or unsupported targets.
    """
    for ad in adapters:
        weights = ad.path / WEIGHTS
        missing = [w.removesuffix(".weight") for w in ad.targets if w not in ckpt.tensors]
        if missing:
            raise LoraError(
                f"{weights}: {len(missing)} target module(s) not in {ckpt.path}, e.g. {missing[0]}: "
                "an adapter for another base model"
            )
        for w, t in ad.targets.items():
            if w not in linear:
                raise LoraError(f"{weights}: target {w.removesuffix('.weight')} is not a Linear layer we can merge")
            out, inp = ckpt.tensors[w].shape
            if t.a.shape[1] != inp or t.b.shape[0] != out:
                raise LoraError(
                    f"{weights}: {w.removesuffix('.weight')}: lora_A {t.a.shape} / lora_B {t.b.shape} do not fit "
                    f"the base weight {ckpt.tensors[w].shape}: an adapter for another base model"
                )
