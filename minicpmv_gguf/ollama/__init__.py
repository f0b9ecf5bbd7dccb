"""Ollama packaging: the LM and mmproj GGUFs plus a Modelfile, and a Modelfile checker that follows Ollama's rules."""

from .modelfile import (
    CHAT_TEMPLATE,
    DEFAULT_NAME,
    DEFAULT_NUM_CTX,
    OLLAMA_MIN_VERSION,
    OllamaPackage,
    package_ollama,
    render_modelfile,
)
from .validate import Command, GGUFKind, Problem, check_modelfile, classify_gguf, parse_modelfile

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_NAME",
    "DEFAULT_NUM_CTX",
    "OLLAMA_MIN_VERSION",
    "Command",
    "GGUFKind",
    "OllamaPackage",
    "Problem",
    "check_modelfile",
    "classify_gguf",
    "package_ollama",
    "parse_modelfile",
    "render_modelfile",
]
