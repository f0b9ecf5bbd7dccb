"""The child side of quantize_in_child: `python -m minicpmv_gguf.pipeline.quantize_child JOB_JSON`.

Messages are JSON lines on the original stdout; fd 1 is pointed at stderr so that nothing native can
mix into them. A watchdog ends the child when its parent is gone (a killed build).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(3)  # the build that wanted this file is gone; its .part is deleted by the next run


def main(job: dict) -> None:
    messages = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    threading.Thread(target=_watch_parent, args=(job["parent"],), daemon=True).start()

    def send(*msg) -> None:
        messages.write(json.dumps(msg) + "\n")

    from ..errors import ToolkitError
    from ..quantize import quantize_lm

    try:
        r = quantize_lm(
            Path(job["src"]),
            Path(job["out"]),
            qtype=job["qtype"],
            threads=job["threads"],
            overwrite=True,
            progress=lambda done, total: send("progress", done, total),
        )
        send("done", r.qtype, r.in_bytes, r.out_bytes, r.n_params, r.seconds)
    except ToolkitError as err:
        send("error", type(err).__name__, str(err))
    except MemoryError:
        send("error", "QuantizeError", f"{job['src']}: out of memory while quantizing")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
