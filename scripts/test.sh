#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up .venv (llama-cpp-python compiles from source the first time: about 6 minutes)"
bash scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
