"""Parity bounds: how close each GGUF type must come to the float32 PyTorch reference.

Measured on the tests' seeded tiny checkpoints (random weights) and set a few times above the worst
measurement. Random weights are the hard case: their near-tied logits flip argmaxes that trained
weights keep, so a real checkpoint lands well inside these bounds.
"""

from __future__ import annotations

# Unquantized LM GGUF: (max worst-prompt NMSE, min pooled top-1), about 4x the NMSE measured over 1,377
# positions (f32 4.5e-9 / 100 %, f16 2.3e-5 / 99.3 %, bf16 1.2e-3 / 95.1 %, q8_0 1.7e-2 / 83.0 %). Why:
# - f16 rounds weights to 11 significant bits; bf16 keeps 8, so ~(2^3)^2 = 64x the squared error.
# - ggml's bf16 and q8_0 matmuls also round the activations (to bf16, or to 8-bit blocks); our q8_0 file
#   is byte-identical to llama.cpp's own quantizer output (test_q8_0_equals_llama_cpp_quantizer).
LM_FLOAT = {"F32": (1e-6, 0.999), "F16": (1e-4, 0.98), "BF16": (5e-3, 0.90), "Q8_0": (5e-2, 0.75)}

# Quantized LM GGUF: (max mean KL divergence in nats, min pooled top-1) by the type's bits per weight.
# Measured on the k-quant-wide tiny checkpoint: Q8_0 0.012 / 74 %, Q6_K 0.070 / 47 %, Q5_K_M 0.11 / 38 %,
# Q4_K_M 0.23 / 21 %, Q4_0 0.37 / 11 %, Q3_K_M 0.46 / 7 %, Q2_K 0.73 / 2 %; an unrelated model of the
# same shape: 1.0 / 0.1 %. (Qwen3.5-0.8B's trained weights at Q4_K_M: 0.036 against F16.)
LM_QUANT = {
    "Q8": (0.05, 0.50),
    "Q6": (0.15, 0.25),
    "Q5": (0.25, 0.15),
    "Q4": (0.5, 0.05),
    "IQ4": (0.5, 0.05),
    "Q3": (0.8, 0.0),
    "IQ3": (0.8, 0.0),
}
LM_QUANT_LOWEST = (0.95, 0.0)  # 2 bits and below: only a broken file is caught

# mmproj GGUF: (min per-token cosine, max per-chunk NMSE), 5-15x from the worst measured over the vision
# parity cases (both modes): f32 0.999999 / 1.5e-6 (fp32 rounding, ggml's FP16 tanh-GELU table; F32 is
# the spec's bound), f16 0.9999986 / 1.9e-6, bf16 0.99993 / 1.1e-4, q8_0 0.99949 / 6.9e-4. Why:
# - 1-D tensors and the position table stay F32 in every file; the patch conv is F16 only in the f16 file.
# - f16 keeps 11 significant bits and ggml's f16 matmul rounds the activations to f16 as well, which on
#   these O(1) activations is barely above fp32 noise; bf16 keeps 8 bits, ~64x the f16 squared error.
# - q8_0 stores 8-bit blocks of 32 with one scale and quantizes the activations to 8 bits too.
MMPROJ = {"F32": (0.9999, 1e-5), "F16": (0.99999, 1e-5), "BF16": (0.999, 1e-3), "Q8_0": (0.995, 5e-3)}
# Block types against the F32 mmproj (tests/test_mmproj_quant.py: MLP width 100, padded; both modes, one
# chunk and seven), about 3-4x the worst NMSE measured: q6_k 0.99823 / 2.5e-3, q5_1 0.9878 / 1.7e-2,
# q5_0 0.9873 / 1.7e-2, q5_k 0.9897 / 1.5e-2, q4_k 0.9687 / 3.8e-2, iq4_nl 0.9604 / 6.6e-2,
# q4_1 0.9427 / 7.5e-2, q4_0 0.9477 / 7.7e-2. Random weights at width 64 are the hard case: on the trained
# model's tower the same types cost far less (benchmarks/results/vision_quant_tiny.md: Q4_0 0.988 worst).
MMPROJ.update(
    {
        "Q6_K": (0.99, 1e-2),
        "Q5_1": (0.95, 6e-2),
        "Q5_0": (0.95, 6e-2),
        "Q5_K": (0.95, 6e-2),
        "Q4_K": (0.90, 0.15),
        "IQ4_NL": (0.80, 0.25),
        "Q4_1": (0.80, 0.25),
        "Q4_0": (0.80, 0.25),
    }
)


def lm_float_bounds(file_type: str) -> tuple[float, float]:
    return LM_FLOAT[file_type.upper()]


def lm_quant_bounds(file_type: str) -> tuple[float, float]:
    return LM_QUANT.get(file_type.upper().split("_")[0], LM_QUANT_LOWEST)  # "Q4_K_M" -> "Q4"


def mmproj_bounds(file_type: str) -> tuple[float, float]:
    return MMPROJ.get(file_type.upper(), MMPROJ["Q8_0"])
