"""llama.cpp's and libmtmd's log: one callback per process, lines to Python logging, per-thread capture.

The native libraries hold a single global log callback. `install` points llama.cpp (and with it
ggml), libmtmd and libmtmd's helpers at `forward` once, from `lib.llama_cpp()`; nothing else may
call their `*_log_set`. Every line goes to the `minicpmv_gguf.native` logger at DEBUG (shown by
`minicpmv-gguf -v`). A native call runs on the Python thread that made it and logs on that thread,
so `capture_log()` collects only the lines of its own thread: two threads calling llama.cpp at once
each see their own lines, and each builds its error message from them (`failure_reason`). Lines from
the libraries' own worker threads reach logging only.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

_log = logging.getLogger(__name__)
_local = threading.local()  # .partial: the line being assembled; .captures: the open captures
_installed: list = []  # the ctypes callback: it must stay alive as long as the libraries may call it

# Words of a line that reports a failure (llama.cpp has no error codes in its messages).
_FAILURE = re.compile(r"error|fail|invalid|unable|missing", re.IGNORECASE)
# The loader's own reason (the tensor, key or shape), ahead of the generic "failed to load model" lines.
_SPECIFIC = re.compile(r"tensor '|key '|wrong (shape|type|number)")
_PREFIX = re.compile(r"^\w+: (error loading model: )?")  # "llama_model_load: error loading model: ..."


def forward(level: int, text: bytes, user_data) -> None:
    """The ggml log callback: assemble this thread's lines (messages arrive in pieces) and pass each on."""
    joined = getattr(_local, "partial", "") + text.decode("utf-8", "replace")
    *lines, _local.partial = joined.split("\n")
    for line in lines:
        if line.strip():
            _log.debug("%s", line)
            for capture in getattr(_local, "captures", ()):
                capture(line)


def install(llama_cpp: ModuleType, mtmd: ModuleType) -> None:
    """Point every native logger at `forward` (llama_log_set also sets ggml's); once per process."""
    if _installed:
        return
    callback = llama_cpp.llama_log_callback(forward)
    _installed.append(callback)
    llama_cpp.llama_log_set(callback, None)
    mtmd.mtmd_log_set(callback, None)
    mtmd.mtmd_helper_log_set(callback, None)


@contextmanager
def capture_log(on_line: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """The lines this thread's native calls log inside the block; `on_line` also sees each as it comes.

    Captures nest: an outer one gets the lines of the inner ones too.
    """
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        if on_line is not None:
            on_line(line)

    if not hasattr(_local, "captures"):
        _local.captures = []
    _local.captures.append(collect)
    try:
        yield lines
    finally:
        _local.captures.remove(collect)


def failure_reason(lines: list[str]) -> str:
    """The first line that reports a failure (later ones only repeat that the call failed), minus its
    `function: ` prefix; else the last line; for one-line error messages."""
    lines = [" ".join(line.split()) for line in lines if line.strip()]  # llama.cpp pads shapes with runs of spaces
    specific = [line for line in lines if _SPECIFIC.search(line)]
    failures = [line for line in lines if _FAILURE.search(line)]
    line = (specific or failures or lines[-1:] or ["no message from llama.cpp"])[0]
    return _PREFIX.sub("", line)
