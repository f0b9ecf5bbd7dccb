#!/usr/bin/env bash
# Set up .venv, build the small checkpoint this repository ships (LM GGUF -> Q4_K_M, mmproj, Ollama
# package, manifest), then ask the built model about the image the repository ships. No network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up .venv (llama-cpp-python compiles from source the first time: about 6 minutes)"
bash scripts/setup.sh
CHECKPOINT=examples/minicpmv46-tiny-trained
.venv/bin/minicpmv-gguf build "$CHECKPOINT" -o demo-out
.venv/bin/minicpmv-gguf run demo-out/lm-Q4_K_M.gguf --mmproj demo-out/mmproj-16x.gguf \
    --image examples/house.png -p "What is in the picture?" --max-tokens 24 --seed 0
echo
echo "(the demo LM was trained for minutes on Python docs and its vision tower is random: expect docs-like text, not a description)"
