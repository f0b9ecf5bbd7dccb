"""llama.cpp's log, captured during a call so that failures become one-line toolkit errors, not noise."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


class captured_llama_log:
    """Collect llama.cpp's log lines during a call instead of printing them; `on_line` also sees each line."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self.on_line = on_line

    def __enter__(self) -> list[str]:
        import llama_cpp

        self.lines: list[str] = []

        def collect(level, text, user_data):
            line = text.decode("utf-8", "replace")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

        self._callback = llama_cpp.llama_log_callback(collect)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self.lines

    def __exit__(self, *exc) -> None:
        import llama_cpp

        # Back to llama-cpp-python's own logger.
        from llama_cpp._logger import llama_log_callback as default_callback

        llama_cpp.llama_log_set(default_callback, ctypes.c_void_p(0))
