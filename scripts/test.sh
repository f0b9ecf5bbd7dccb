#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/test_ollama.py runs the Modelfile TEMPLATE with Go's text/template (Ollama's engine): install Go
# when it is missing and apt-get can (about 20 s). Without Go that test fails and says so.
if ! command -v go >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing golang-go for the Ollama TEMPLATE test"
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            golang-go; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        echo "warning: could not install golang-go; tests/test_ollama.py will fail" >&2
    fi
    rm -f "$apt_log"
fi
# tests/test_serve_page.py drives Debian's chromium with Playwright (Playwright's own browser download is not
# used): install it when it is missing and apt-get can. Without it, and without root, those tests skip.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the chat page tests"
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        echo "warning: could not install chromium; tests/test_serve_page.py will fail" >&2
    fi
    rm -f "$apt_log"
fi
echo "setting up .venv (llama-cpp-python compiles from source the first time: about 6 minutes)"
bash scripts/setup.sh test
# Style is held by ruff (settings in pyproject.toml): lint and formatting fail the run like a test.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
