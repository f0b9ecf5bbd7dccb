"""A PEFT-layout LoRA adapter on every LM Linear layer of a checkpoint, written with numpy (no torch, no peft).

For timing `build --lora` on the full-size random-weight checkpoint: PEFT itself would need the fp32 model in
memory (~6 GB). The layout is what PEFT's save_pretrained writes (base_model.model.<module>.lora_A/B.weight).

    python benchmarks/make_lora_adapter.py /work/cache/full-ckpt /tmp/lora-bench/adapter-r16 --rank 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minicpmv_gguf.checkpoint import open_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ckpt, r, rng = open_checkpoint(args.checkpoint), args.rank, np.random.default_rng(args.seed)
    tensors = {}
    for name, ref in sorted(ckpt.tensors.items()):
        if not name.startswith("model.language_model.") or len(ref.shape) != 2 or name.endswith("embed_tokens.weight"):
            continue
        rows, cols = ref.shape
        module = "base_model.model." + name.removesuffix(".weight")
        tensors[f"{module}.lora_A.weight"] = rng.standard_normal((r, cols), dtype=np.float32) / np.float32(cols**0.5)
        tensors[f"{module}.lora_B.weight"] = rng.standard_normal((rows, r), dtype=np.float32) * np.float32(0.01)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted({k.split(".")[-3] for k in tensors}),
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "base_model_name_or_path": str(args.checkpoint),
    }
    (args.out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    print(f"{len(tensors) // 2} targets, rank {r}: {args.out}")


if __name__ == "__main__":
    main()
