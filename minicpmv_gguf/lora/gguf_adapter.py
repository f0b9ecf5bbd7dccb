"""write_lora_gguf: a PEFT adapter's language-model targets -> a llama.cpp LoRA adapter GGUF (arch qwen35).

llama.cpp's loader (src/llama-adapter.cpp) reads general.type = "adapter", adapter.type = "lora",
adapter.lora.alpha and, per base tensor, `<name>.lora_a` (ne [in, r]) and `<name>.lora_b` (ne [r, out]),
and scales B·A by adapter_scale·alpha/r. The base tensor's row transforms act on one factor: a value-head
reorder of rows on B, of columns on A, so T(W + B·A) = T(W) + T_B(B)·T_A(A).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T

from .. import __version__
from ..checkpoint import open_checkpoint
from ..convert_hf_to_gguf.tensor_map import SKIP_PREFIXES, lm_rules
from ..convert_hf_to_gguf.transforms import v_head_reorders
from ..errors import LoraError
from ..gguf_io import KV, TensorOut, check_output, write_gguf
from ..safetensors_io import read_tensor
from ..spec import LM_ARCH
from ..tensor_plan import Transform, keep, plan_tensors
from .adapter import WEIGHTS, Adapter, LoraTarget, open_adapter
from .merge import lora_kvs, prepare

# Which factor takes a linear-attention tensor's value-head reorder (tensor_map.lm_rules), by HF suffix.
FACTOR_REORDER = {
    "linear_attn.in_proj_qkv.weight": ("b", "qkv"),
    "linear_attn.in_proj_z.weight": ("b", "rows"),
    "linear_attn.in_proj_a.weight": ("b", "heads"),
    "linear_attn.in_proj_b.weight": ("b", "heads"),
    "linear_attn.out_proj.weight": ("a", "cols"),
}


@dataclass(frozen=True)
class LoraGGUFResult:
    out: Path
    adapter: Adapter
    n_tensors: int
    alpha: float
    seconds: float

    def summary(self) -> str:
        return (
            f"wrote {self.out}: LoRA adapter for {len(self.adapter.targets)} LM tensors, rank {self.adapter.rank}, "
            f"alpha {self.alpha:g}, in {self.seconds:.1f} s"
        )


def factor_transforms(weight: str, transform: Transform, reorders: dict[str, Transform]) -> tuple[Transform, Transform]:
    """(transform of A, transform of B) for a target whose base tensor is converted by `transform`."""
    if transform is keep:
        return keep, keep
    suffix = next((s for s in FACTOR_REORDER if weight.endswith(s)), None)
    if suffix is None:
        raise LoraError(f"{weight}: its GGUF tensor is transformed in a way a LoRA factor cannot follow")
    factor, kind = FACTOR_REORDER[suffix]
    return (reorders[kind], keep) if factor == "a" else (keep, reorders[kind])


def _factor(t: LoraTarget, ab: str, step: Transform, factor: float) -> np.ndarray:
    w = step(read_tensor(t.a if ab == "a" else t.b))
    return np.ascontiguousarray(w * np.float32(factor) if factor != 1.0 else w, dtype=np.float32)


def write_lora_gguf(adapter_dir: Path, base: Path, out: Path, *, overwrite: bool = False) -> LoraGGUFResult:
    """Convert a PEFT adapter's language-model targets to a llama.cpp adapter GGUF for `base`'s LM GGUF.

    Raises:
        LoraError: any refusal of open_adapter / check_against, or an adapter that touches the vision half.
        OutputError: `out` exists (without overwrite) or cannot be written.
    """
    t0 = time.perf_counter()
    out = Path(out)
    check_output(out, overwrite=overwrite)
    ad = open_adapter(adapter_dir)
    ckpt = open_checkpoint(Path(base))
    prepare([ad], ckpt)
    if ad.vision_targets:
        raise LoraError(
            f"{ad.path / WEIGHTS}: adapts the vision tower or projector ({ad.vision_targets[0].removesuffix('.weight')}"
            ", ...), which llama.cpp adapters cannot: merge it with `--lora` on `mmproj` or `build` instead"
        )
    c = ckpt.text
    planned, _ = plan_tensors(
        ckpt.tensors.values(),
        lm_rules(c),
        c,
        n_blocks=c.num_hidden_layers,
        layer_types=c.layer_types,
        skip_prefixes=SKIP_PREFIXES,
    )
    by_name = {p.hf_name: p for p in planned}
    reorders = v_head_reorders(
        c.linear_num_key_heads, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_k_dim
    )
    first = next(iter(ad.targets.values()))
    # One alpha per file: llama.cpp scales by alpha / r with r read from each B, so a module whose own scaling
    # differs (rank_pattern, alpha_pattern) gets the ratio folded into its B; with one r and alpha it is 1.
    alpha = first.scaling * first.rank
    missing = [n for n in ad.targets if n not in by_name]
    if missing:
        raise LoraError(f"{ad.path / WEIGHTS}: target {missing[0].removesuffix('.weight')} is not in the LM GGUF")
    tensors: list[TensorOut] = []
    for name, t in sorted(ad.targets.items(), key=lambda kv: _order(by_name[kv[0]])):
        p = by_name[name]
        ta, tb = factor_transforms(name, p.transform, reorders)
        fold = t.scaling * t.rank / alpha
        shapes = {"a": t.a.shape, "b": t.b.shape}
        for ab, step, factor in (("a", ta, 1.0), ("b", tb, fold)):
            tensors.append(
                TensorOut(
                    f"{p.gguf_name}.lora_{ab}",
                    shapes[ab],
                    Q.F32,
                    lambda t=t, ab=ab, step=step, factor=factor: [_factor(t, ab, step, factor)],
                )
            )
    kvs = [
        KV("general.type", "adapter", T.STRING),
        KV("general.name", f"{ad.path.resolve().name} (LoRA for {ckpt.path.resolve().name})", T.STRING),
        KV("general.converter", f"minicpmv-gguf {__version__}", T.STRING),
        KV("adapter.type", "lora", T.STRING),
        KV("adapter.lora.alpha", float(alpha), T.FLOAT32),
        *lora_kvs([ad], vision=False),
    ]
    write_gguf(out, LM_ARCH, kvs, tensors, overwrite=overwrite)
    return LoraGGUFResult(out, ad, len(tensors), alpha, time.perf_counter() - t0)


def _order(p) -> tuple[int, str]:
    """Blocks in order, as the base GGUF lays them out."""
    return (-1 if p.bid is None else p.bid, p.gguf_name)
