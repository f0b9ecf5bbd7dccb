"""Everything the toolkit asks of llama.cpp, libmtmd and ggml, through llama-cpp-python's ctypes bindings.

    lib.py        finding and loading the libraries, once (`llama_cpp()`, `mtmd()`, `ggml_base()`, ...)
    log.py        the one native log callback: lines to Python logging, per-thread `capture_log()`
    model.py      LanguageModel: an LM GGUF's weights and vocabulary
    context.py    Context: one sequence's memory, decoding, logits, saved states
    vision.py     Vision, MediaChunks, ImagePart: an mmproj GGUF in libmtmd
    sampler.py    Sampler: llama.cpp's sampler chain
    quantizer.py  quantize_model: llama.cpp's quantizer
    ggml.py       ggml's row kernels (F16/BF16 casts, block quantization)
    cpu.py        physical_cores

Nothing here imports llama_cpp until it is first needed. Handles (models, contexts, mmprojs, samplers,
chunks) free their native object in an idempotent `close()`; using one after it raises ClosedError.
"""

from .context import Context
from .cpu import physical_cores
from .lib import llama_cpp
from .log import capture_log, failure_reason
from .model import LanguageModel
from .quantizer import quantize_model
from .sampler import Sampler
from .vision import MEDIA_MARKER, ImagePart, MediaChunks, Vision

__all__ = [
    "MEDIA_MARKER",
    "Context",
    "ImagePart",
    "LanguageModel",
    "MediaChunks",
    "Sampler",
    "Vision",
    "capture_log",
    "failure_reason",
    "llama_cpp",
    "physical_cores",
    "quantize_model",
]
