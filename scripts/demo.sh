#!/usr/bin/env bash
# Set up .venv and convert the small checkpoint this repository ships; then load the result in llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up .venv (llama-cpp-python compiles from source the first time: about 6 minutes)"
bash scripts/setup.sh
mkdir -p demo-out
.venv/bin/minicpmv-gguf convert examples/tiny-minicpmv46 -o demo-out/lm-f32.gguf --outtype f32 --force
.venv/bin/minicpmv-gguf convert examples/tiny-minicpmv46 -o demo-out/lm-q8_0.gguf --outtype q8_0 --force
.venv/bin/python - <<'PY'
from llama_cpp import Llama
llm = Llama("demo-out/lm-f32.gguf", n_ctx=256, verbose=False)
ids = llm.tokenize("<|im_start|>user\nHello!<|im_end|>\n".encode(), add_bos=False, special=True)
print(f"llama.cpp loaded demo-out/lm-f32.gguf: {llm.n_vocab()} tokens, prompt -> {ids}")
PY
