"""Convert, quantize and run OpenBMB's MiniCPM-V 4.6 as GGUF files for llama.cpp on a CPU."""

__version__ = "0.1.0"
