"""Quantization of the LM GGUF with llama.cpp's own quantizer, and what it costs in quality."""

from .evaluate import EvalResult, evaluate
from .imatrix import ImatrixResult, compute_imatrix
from .quantize import QUANT_TYPES, RECIPES, QuantizeResult, load_imatrix, parse_overrides, quantize_lm, resolve_type

__all__ = [
    "EvalResult",
    "ImatrixResult",
    "QUANT_TYPES",
    "RECIPES",
    "QuantizeResult",
    "compute_imatrix",
    "evaluate",
    "load_imatrix",
    "parse_overrides",
    "quantize_lm",
    "resolve_type",
]
