"""Moved to minicpmv_gguf.verify (reference.py and texts.py): `verify` uses the same helpers as the tests."""

from minicpmv_gguf.verify.reference import N_THREADS, hf_logits, llama_logits, load_llama, nmse, top1_agreement  # noqa: F401
from minicpmv_gguf.verify.texts import SENTENCES, long_text  # noqa: F401
