"""MiniCPM-V 4.6 as llama.cpp, libmtmd and Ollama see it: the facts several modules share, each stated once."""

from __future__ import annotations

HF_MODEL_TYPE = "minicpmv4_6"  # config.json model_type
LM_ARCH = "qwen35"  # llama.cpp's architecture name for the Qwen3.5 hybrid LM (also its pre-tokenizer name)
PROJECTOR = "minicpmv4_6"  # clip.projector_type of the mmproj; not in gguf 0.19's VisionProjectorType

# One mmproj per mode: libmtmd reads the mode from clip.vision.projector.scale_factor (its n_merge).
MODES = {"16x": 4, "4x": 2}
MODE_BY_SCALE = {scale: mode for mode, scale in MODES.items()}
DEFAULT_MODE = "16x"  # 4x fewer visual tokens than 4x mode, so faster; 4x is for small text and fine detail
DETAIL_MODES = {"normal": "16x", "high": "4x"}  # the runtime's and the server's `detail` -> mmproj mode
# The mmproj type `build` writes: the least memory for the same answers (benchmarks/results/vision_quant_*.md;
# README "Speed and memory" says what it costs in time). `mmproj` alone defaults to the lossless F16.
BUILD_MMPROJ_TYPE = "q4_0"
MMPROJ_TYPE = "f16"

# What libmtmd's minicpmv4_6 graph hardcodes: a 70x70 position table, 2x2 windows and 2x2 merges.
POSITION_GRID = 70
WINDOW = 2
MERGE = 2

# Chat markers of the tokenizer and template.
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
STOP_STRINGS = (IM_END, END_OF_TEXT)  # end a reply (Ollama's stop parameters)
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"  # what the template emits per image / video item


def image_id(k: int) -> str:
    """The tag MiniCPMV4_6Processor writes before the conversation's k-th image (k from 0)."""
    return f"<image_id>{k}</image_id>"


# OpenBMB's sampling for MiniCPM-V 4.6 (its llama.cpp guide and generation_config.json).
TEMPERATURE, TOP_P, TOP_K, REPEAT_PENALTY = 0.7, 0.8, 100, 1.05

MODEL_ID = "minicpm-v4.6"  # the name `ollama` packages under and `serve` lists in /v1/models

# The toolkit's defaults for a chat: the context every command and the Ollama package use, and the longest reply.
DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS = 1024
