"""Merging LoRA adapters into planned tensors: W' = W + Σ scale·(alpha/r)·B·A, row chunk by row chunk.

The delta is added in float32 to the checkpoint's rows before the HF -> GGUF transform, so a merged
file is what converting PEFT's merge_and_unload() output gives; only A and B are held in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
from gguf import GGUFValueType as T

from ..checkpoint import Checkpoint
from ..errors import LoraError
from ..gguf_io import KV
from ..safetensors_io import read_tensor
from ..tensor_plan import Delta, PlannedTensor
from .adapter import WEIGHTS, Adapter, LoraTarget, check_against

log = logging.getLogger(__name__)

# 2-D checkpoint weights that are lookup tables, not Linear layers: a LoRA on them means something else.
_NOT_LINEAR = ("embed_tokens.weight", "position_embedding.weight")


def linear_weights(ckpt: Checkpoint) -> set[str]:
    """Checkpoint weights of Linear layers: the only ones a LoRA adapter may target here."""
    return {
        name
        for name, ref in ckpt.tensors.items()
        if name.endswith(".weight") and len(ref.shape) == 2 and not name.endswith(_NOT_LINEAR)
    }


def _delta(targets: list[tuple[LoraTarget, float]]) -> Delta:
    def rows(start: int, stop: int) -> np.ndarray:
        out = None
        for t, scale in targets:  # A and B are re-read per chunk: nothing stays in memory between tensors
            d = (read_tensor(t.b)[start:stop] @ read_tensor(t.a)) * np.float32(scale)
            out = d if out is None else out + d
        return out

    return rows


def attach(planned: list[PlannedTensor], adapters: list[Adapter], *, vision: bool) -> list[PlannedTensor]:
    """`planned` with each LoRA target's delta attached; targets of the other half (LM or vision) are left alone.

    Raises:
        LoraError: a target of this half that the plan does not write (left out on purpose, e.g. MTP heads).
    """
    if not adapters:
        return planned
    by_name = {p.hf_name: i for i, p in enumerate(planned)}
    per_tensor: dict[int, list[tuple[LoraTarget, float]]] = {}
    for ad in adapters:
        if not any(t.is_vision == vision for t in ad.targets.values()):
            log.warning("%s adapts nothing in the %s: this file is unchanged", ad.path, "mmproj" if vision else "LM")
        for name, t in ad.targets.items():
            if t.is_vision != vision:
                continue
            if name not in by_name:
                if vision and ".vit_merger." in name:
                    continue  # the 4x file leaves the merger out: its LoRA goes into the 16x file only
                raise LoraError(f"{ad.path / WEIGHTS}: target {name.removesuffix('.weight')} is not converted")
            per_tensor.setdefault(by_name[name], []).append((t, ad.scale * t.scaling))
    out = list(planned)
    for i, targets in per_tensor.items():
        out[i] = replace(planned[i], delta=_delta(targets))
    return out


def prepare(adapters: list[Adapter], ckpt: Checkpoint) -> list[Adapter]:
    """Check the adapters against the checkpoint (names, shapes, Linear targets) and return them."""
    check_against(adapters, ckpt, linear=linear_weights(ckpt))
    return adapters


def lora_kvs(adapters: list[Adapter], *, vision: bool) -> list[KV]:
    """general.lora.* keys of a merged file: each adapter's path, sha256, rank, alpha, scale and targets."""
    rows: list[KV] = []
    used = [ad for ad in adapters if any(t.is_vision == vision for t in ad.targets.values())]
    if not used:
        return rows
    rows.append(KV("general.lora.count", len(used), T.UINT32))
    for i, ad in enumerate(used):
        rec, key = ad.record(), f"general.lora.{i}"
        rows += [
            KV(f"{key}.path", rec["path"], T.STRING),
            KV(f"{key}.sha256", json.dumps(rec["sha256"], sort_keys=True), T.STRING),
            KV(f"{key}.rank", rec["rank"], T.UINT32),
            KV(f"{key}.alpha", rec["alpha"], T.FLOAT32),
            KV(f"{key}.rslora", rec["rslora"], T.BOOL),
            KV(f"{key}.scale", rec["scale"], T.FLOAT32),
            KV(
                f"{key}.targets",
                [n.removesuffix(".weight") for n in rec["targets"] if ad.targets[n].is_vision == vision],
                T.ARRAY,
                T.STRING,
            ),
        ]
    return rows
