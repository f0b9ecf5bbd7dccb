"""quantize_in_child: llama.cpp's quantizer in a child process, so Ctrl-C stops it at once.

Python handles SIGINT only between bytecodes: during the one long llama_model_quantize call (the
longest stage of a build) Ctrl-C would wait. The child runs in its own session (no
terminal signals), writes only a `.part` file, and dies with its parent; the parent terminates it on
Ctrl-C and renames the result into place itself, so nothing is ever left under a final name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .. import errors
from ..quantize import QuantizeResult

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def quantize_in_child(
    src: Path, out: Path, *, qtype: str, threads: int | None, progress: Callable[[int, int], None] | None = None
) -> QuantizeResult:
    """quantize_lm(src, out, ...) in a child process; its toolkit errors are raised here with their own type.

    Raises:
        QuantizeError, OutputError: as quantize_lm; QuantizeError if the child ends without a result.
    """
    src, out = Path(src), Path(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.part"  # a leftover of a killed build: the next run deletes it
    job = {"src": str(src), "out": str(tmp), "qtype": qtype, "threads": threads, "parent": os.getpid()}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "minicpmv_gguf.pipeline.quantize_child", json.dumps(job)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    answer = None
    try:
        for line in proc.stdout:
            msg = json.loads(line)
            if msg[0] == "progress" and progress:
                progress(msg[1], msg[2])
            elif msg[0] in ("done", "error"):
                answer = msg
        proc.wait()
        if answer is None:
            raise errors.QuantizeError(
                f"{src}: the quantizer process ended without a result (exit code {proc.returncode}; out of memory?)"
            )
        if answer[0] == "error":
            raise getattr(errors, answer[1], errors.QuantizeError)(answer[2].replace(str(tmp), str(out)))
        try:
            os.replace(tmp, out)
        except OSError as err:
            raise errors.OutputError(f"{out}: cannot write: {err.strerror or err}") from err
        return QuantizeResult(out, *answer[1:])
    finally:
        if proc.poll() is None:  # Ctrl-C or an error here: the child must not go on
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        tmp.unlink(missing_ok=True)
        # quantize_lm's own temporary file, which a terminated child had no chance to delete
        (tmp.parent / f".{tmp.name}.{proc.pid}.part").unlink(missing_ok=True)
