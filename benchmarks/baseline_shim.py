#!/usr/bin/env python3
"""Run llama.cpp's unmodified convert_hf_to_gguf.py, with one fallback for a made-up tokenizer.

    python baseline_shim.py LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments ...]

llama.cpp chooses `tokenizer.ggml.pre` by hashing the token ids of a fixed test string and looking
the hash up in `TextModel.get_vocab_base_pre`. The random-weight checkpoint from
make_full_size_checkpoint.py has the Qwen3.5 pre-tokenizer but a synthetic vocabulary, so its hash
is unknown and the converter stops with NotImplementedError ("BPE pre-tokenizer was not
recognized"). The documented fix, convert_hf_to_gguf_update.py, downloads the real tokenizers, which
is not possible offline. So this wraps that one method in memory: when, and only when, the lookup
fails, it returns "qwen35" (the answer llama.cpp gives for openbmb/MiniCPM-V-4_6) and prints a
notice. On a real checkpoint the hash is known and the wrapper does nothing. The converter's files
are not edited; it runs as `__main__` in this process, so timing and memory are its own.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

FALLBACK_PRE = "qwen35"


def main() -> None:
    llama_dir = Path(sys.argv[1]).resolve()
    script = llama_dir / "convert_hf_to_gguf.py"
    # The converter's own gguf-py must win over the gguf package installed in the venv.
    sys.path[:0] = [str(llama_dir / "gguf-py"), str(llama_dir)]

    from conversion.base import TextModel

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            print(
                f"[baseline_shim] pre-tokenizer hash not recognized (synthetic tokenizer): "
                f"using tokenizer.ggml.pre = {FALLBACK_PRE!r}",
                file=sys.stderr,
                flush=True,
            )
            return FALLBACK_PRE

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
