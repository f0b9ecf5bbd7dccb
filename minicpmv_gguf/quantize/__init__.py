"""Quantization of the LM GGUF with llama.cpp's own quantizer, and what it costs in quality."""

from .quantize import QUANT_TYPES, RECIPES, QuantizeResult, load_imatrix, parse_overrides, quantize_lm, resolve_type

__all__ = ["QUANT_TYPES", "RECIPES", "QuantizeResult", "load_imatrix", "parse_overrides", "quantize_lm",
           "resolve_type"]
