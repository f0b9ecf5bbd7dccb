#!/usr/bin/env bash
# Create .venv and install the toolkit. `scripts/setup.sh test` also installs the PyTorch reference.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
    # The CPU build of torch first: an unpinned torch pulls several GB of CUDA wheels.
    .venv/bin/pip install --quiet torch==2.13.0
    .venv/bin/pip install --quiet -e '.[test]'
else
    .venv/bin/pip install --quiet -e .
fi
