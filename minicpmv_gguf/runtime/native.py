"""Process-wide plumbing for llama.cpp and libmtmd: their log lines, and the CPU's physical core count.

The native libraries print to stderr by default. Here every line goes to the `minicpmv_gguf.runtime.native`
logger at DEBUG (shown by `minicpmv-gguf -v`), and the last lines are kept to explain a failed call.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

_log = logging.getLogger(__name__)
_recent: deque[str] = deque(maxlen=64)
_partial: list[str] = []
_callback = None  # the ctypes callback must stay alive while the libraries may call it


def _forward(level: int, text: bytes, _user_data) -> None:
    """ggml log callback: assemble lines (messages arrive in pieces) and pass each one on."""
    _partial.append(text.decode("utf-8", "replace"))
    joined = "".join(_partial)
    *lines, rest = joined.split("\n")
    _partial[:] = [rest] if rest else []
    for line in lines:
        if line.strip():
            _recent.append(line.strip())
            _log.debug("%s", line)


def route_native_logs() -> None:
    """Send llama.cpp's and libmtmd's logs to Python logging; call before loading (others may reset it)."""
    global _callback
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_forward)
    llama_cpp.llama_log_set(_callback, None)
    mtmd.mtmd_log_set(_callback, None)
    mtmd.mtmd_helper_log_set(_callback, None)


def last_native_error() -> str:
    """The most recent native log line that reports a failure (or the last line), for error messages."""
    lines = list(_recent)
    failures = [x for x in lines if any(w in x.lower() for w in ("error", "failed", "invalid", "unable"))]
    return (failures or lines or ["no message from llama.cpp"])[-1]


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads of one core count once); at least 1.

    llama.cpp runs fastest with one thread per physical core. Linux topology files are read when
    present; elsewhere this falls back to the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            cores.add((package, (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))
