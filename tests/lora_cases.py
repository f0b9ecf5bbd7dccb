"""PEFT LoRA adapters on the tiny checkpoints, made with the real `peft` library, and what PEFT merges them into.

Each case is (checkpoint fixture, target-module regex, rank, rsLoRA); `make_case` writes the adapter folder
and the checkpoint that PEFT's merge_and_unload() gives, and keeps the unmerged PeftModel as the reference.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

LM = r".*language_model\.layers\.\d+\."
TARGETS = {
    "attn": LM + r"self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    "linear": LM + r"linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj)",
    "mlp": LM + r"mlp\.(gate_proj|up_proj|down_proj)",
    "vision": r".*(vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
    r"|vision_tower\.vit_merger\.(self_attn\.(q|k|v|out)_proj|linear_[12])|merger\.mlp\.0\.linear_[12])",
}
# (id, checkpoint fixture, target kinds, rank, rsLoRA)
CASES = [
    ("attn-r4", "tiny_ckpt", ("attn",), 4, False),
    ("linear-r8-rslora", "tiny_ckpt", ("linear",), 8, True),
    ("linear-vheads-r4", "tiny_ckpt_vheads", ("linear",), 4, False),
    ("mlp-r8", "tiny_ckpt", ("mlp",), 8, False),
    ("all-lm-r8-rslora", "tiny_ckpt", ("attn", "linear", "mlp"), 8, True),
]
VISION_CASES = [
    ("vision-r4", "tiny_ckpt", ("vision",), 4, False),
    ("vision-r8-rslora", "tiny_ckpt", ("vision",), 8, True),
]


@dataclass
class LoraCase:
    adapter: Path  # the PEFT adapter folder
    merged: Path  # the checkpoint PEFT's merge_and_unload() saves
    model: object  # the unmerged PeftModel (adapter applied at run time), float32, eval mode


def make_case(ckpt: Path, out: Path, kinds: tuple[str, ...], rank: int, rslora: bool, seed: int = 7) -> LoraCase:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from minicpmv_gguf.verify.reference import load_reference_model

    model = load_reference_model(ckpt)
    pattern = "|".join(f"(?:{TARGETS[k]})" for k in kinds)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=pattern, use_rslora=rslora, init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B != 0 (PEFT's default init makes B zero), deltas about 1/3 of the weights
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 / p.shape[1] ** 0.5)
    adapter = out / "adapter"
    peft_model.save_pretrained(adapter)
    merged_dir = shutil.copytree(ckpt, out / "merged")
    for f in merged_dir.glob("model*.safetensors*"):
        f.unlink()
    merged = copy.deepcopy(peft_model).merge_and_unload()
    state = {k: v.contiguous() for k, v in merged.state_dict().items() if k != "lm_head.weight"}
    save_file(state, merged_dir / "model.safetensors", metadata={"format": "pt"})
    return LoraCase(adapter, merged_dir, peft_model)
