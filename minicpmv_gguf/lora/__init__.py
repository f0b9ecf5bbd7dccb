"""LoRA adapters: PEFT adapter folders merged into the converted GGUFs, or turned into llama.cpp adapter GGUFs."""

from .adapter import Adapter, LoraTarget, open_adapter
from .merge import attach, linear_weights, lora_kvs, prepare

__all__ = ["Adapter", "LoraTarget", "attach", "linear_weights", "lora_kvs", "open_adapter", "prepare"]
