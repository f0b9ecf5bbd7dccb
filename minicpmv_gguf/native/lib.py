"""Finding and loading llama-cpp-python's libraries, each once per process.

`llama_cpp()` is the toolkit's way into the `llama_cpp` package: the first call imports it (and its libmtmd
bindings), routes the native logs to Python logging (log.install) and initialises the backend.
`ggml_base()` and `ggml_cpu()` open ggml's own libraries from the same install without importing the
package, for the row kernels (ggml.py) and the importance matrix's ABI check. `alive()` guards the
handles' pointers.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from pathlib import Path
from types import ModuleType

from ..errors import ClosedError, ToolkitError
from . import log

MISSING = "llama-cpp-python is not installed (pip install 'llama-cpp-python>=0.3.36')"

_lock = threading.Lock()  # two threads' first calls must not load (and install the log) twice
_loaded: dict[str, object] = {}


def llama_cpp() -> ModuleType:
    """The `llama_cpp` package, its logs routed and `llama_backend_init` called (once per process).

    Raises:
        ToolkitError: llama-cpp-python is not installed, or its libraries cannot be loaded.
    """
    module = _loaded.get("llama_cpp")
    if module is None:
        with _lock:
            module = _loaded.get("llama_cpp") or _load_llama_cpp()
    return module


def mtmd() -> ModuleType:
    """llama-cpp-python's libmtmd bindings (`llama_cpp.mtmd_cpp`), loaded with `llama_cpp()`."""
    llama_cpp()
    return _loaded["mtmd"]


def _load_llama_cpp() -> ModuleType:
    _package_dir()  # a missing package: the one clear message, not an ImportError from deep inside
    try:
        import llama_cpp as module
        import llama_cpp.mtmd_cpp as mtmd_module
    except (ImportError, OSError, RuntimeError) as err:  # llama-cpp-python raises RuntimeError for a bad .so
        raise ToolkitError(f"{MISSING}: {err}") from err
    log.install(module, mtmd_module)
    module.llama_backend_init()
    if has_amx(module):
        _no_extra_buffers(module)
    _loaded["mtmd"] = mtmd_module
    _loaded["llama_cpp"] = module
    return module


def has_amx(module) -> bool:
    """Whether this llama.cpp build uses the CPU's AMX units (compiled in, e.g. by GGML_NATIVE on such a CPU)."""
    return b"AMX_INT8 = 1" in module.llama_print_system_info()


def _no_extra_buffers(module) -> None:
    """Load every model without llama.cpp's extra CPU weight buffers (AMX, repacked layouts), as
    llama-server's --no-repack does. With them, this llama.cpp segfaults in llama_decode on an AMX CPU
    for Q4_0, Q4_1, Q8_0, K-quant and IQ4 weights of this model (README, "Chat on a CPU"). Both the
    toolkit's loader and llama-cpp-python's Llama read the defaults from this function."""
    defaults = module.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = False
        return p

    module.llama_cpp.llama_model_default_params = module.llama_model_default_params = params


def ggml_base() -> ctypes.CDLL:
    """libggml-base of the llama-cpp-python install (tensor types, quantization, the GGUF reader)."""
    return _library("ggml-base")


def ggml_cpu() -> ctypes.CDLL:
    """libggml-cpu of the llama-cpp-python install (the CPU's SIMD conversion kernels)."""
    return _library("ggml-cpu")


def _library(stem: str) -> ctypes.CDLL:
    lib = _loaded.get(stem)
    if lib is None:
        with _lock:
            lib = _loaded.get(stem)
            if lib is None:
                lib = _loaded[stem] = ctypes.CDLL(str(_find(_package_dir() / "lib", stem)))
    return lib


def _package_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ToolkitError(MISSING)
    return Path(spec.submodule_search_locations[0])


def _find(lib_dir: Path, stem: str) -> Path:
    for name in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll", f"lib{stem}.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise ToolkitError(f"{lib_dir}: no {stem} library; reinstall llama-cpp-python")


def alive(pointer, what: str):
    """`pointer` if it is set; a closed handle raises here instead of crashing in C."""
    if not pointer:
        raise ClosedError(f"{what} is closed")
    return pointer
