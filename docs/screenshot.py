"""Take the chat page's screenshots for the README: `serve` on the given GGUFs, the page in Debian's
Chromium (Playwright drives it), a question about examples/scene.png and a follow-up.

    python docs/screenshot.py demo-out/lm-Q4_K_M.gguf --mmproj demo-out/mmproj-16x.gguf

writes docs/chat-page.png (1280 x 800, light) and docs/chat-page-phone.png (390 x 844, dark). The repository's
small trained vision-language model (`bash scripts/demo.sh` builds examples/minicpmv46-tiny-vlm into
demo-out/) answers questions about generated scenes like that one.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["How many shapes are there?", "What word is written?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(lm: str, mmprojs: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "minicpmv_gguf.cli", "serve", lm, *(a for m in mmprojs for a in ("--mmproj", m))]
    proc = subprocess.Popen([*args, "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("serve did not answer /health in 2 minutes")


def shoot(browser, url: str, out: Path, width: int, height: int, scheme: str, max_tokens: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
    page = context.new_page()
    # Short, repeatable replies: the page sends no max_tokens or seed of its own.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.continue_(
            post_data=json.dumps({**json.loads(route.request.post_data), "max_tokens": max_tokens, "seed": 7})
        ),
    )
    page.goto(url + "/")
    page.set_input_files("#file", str(ROOT / "examples" / "scene.png"))
    page.wait_for_selector(".thumb .mark.ready", timeout=60_000)
    for i, question in enumerate(QUESTIONS):
        page.fill("#input", question)
        page.press("#input", "Enter")
        page.locator(".msg.assistant").nth(i).locator(".status:not(:empty)").wait_for(timeout=120_000)
    page.screenshot(path=out)
    context.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lm")
    parser.add_argument("--mmproj", action="append", default=[], required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    proc, url = serve(args.lm, args.mmproj)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True)
            shoot(browser, url, args.out_dir / "chat-page.png", 1280, 800, "light", args.max_tokens)
            shoot(browser, url, args.out_dir / "chat-page-phone.png", 390, 844, "dark", args.max_tokens)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
