#!/usr/bin/env bash
# Set up .venv, build the small trained vision-language model this repository ships (LM GGUF -> Q4_K_M,
# mmproj, Ollama package, manifest), then ask it about the scene image the repository ships. No network.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up .venv (llama-cpp-python compiles from source the first time: about 6 minutes)"
bash scripts/setup.sh
.venv/bin/minicpmv-gguf build examples/minicpmv46-tiny-vlm -o demo-out
# examples/scene.png is `python examples/scenes.py 1000000 examples/scene.png`: the first held-out scene
# (never seen in training) with three shapes and a word.
for question in "How many shapes are there?" "What colour is the circle?" "Where is the square?" \
    "What word is written?"; do
    echo "> $question"
    .venv/bin/minicpmv-gguf run demo-out --image examples/scene.png -p "$question" --temperature 0 --max-tokens 8
    echo
done
echo "(a 2.8 M-parameter model trained for 18 minutes on generated scenes: examples/minicpmv46-tiny-vlm/README.md)"
