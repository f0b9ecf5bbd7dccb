#!/usr/bin/env python3
"""`minicpmv-gguf serve` against llama.cpp's llama-server: the same GGUF pair, the same openai client, one run.

    python benchmarks/bench_server.py --lm LM.gguf --mmproj MMPROJ.gguf --llama-server PATH [--threads 2]

Rows, each the median of REPEATS (streamed requests, time to the first text delta):
- new image: a seeded random 448x448 image never sent before, and a question;
- resent: that conversation sent again with the reply and one more question (what chat clients do);
- seen image: a new conversation about the image already sent;
- decode tok/s: one text reply of DECODE_TOKENS tokens, timed from its first token;
- aggregate tok/s with 1, 2 and 4 concurrent text clients (llama-server with -np 4 for its rows);
- peak RSS of the server process (VmHWM) after all of it;
- ours only: a new image prepared with POST /v1/images/prepare 3 s before the question (encode ahead).
llama-server runs with `--reasoning off`, as OpenBMB tells its users, and `--no-repack` where ours turns
llama.cpp's extra weight buffers off (CPUs with AMX; see the README). Writes results/server.md and .json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import RESULTS  # noqa: E402
from bench_encode import cpu_model  # noqa: E402

REPEATS, DECODE_TOKENS, CLIENT_TOKENS, SIDE = 3, 128, 64, 448
QUESTION, FOLLOW_UP, OTHER = "Describe the image.", "What colour is the top left corner?", "Is there any text in it?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_uri(seed: int) -> str:
    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user(text: str, url: str | None = None) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}] if url else []
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


class Server:
    def __init__(self, cmd: list[str], port: int) -> None:
        import httpx

        self.url, self.proc = (
            f"http://127.0.0.1:{port}",
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{cmd[0]} did not start")

    def peak_rss_gb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def stream(url: str, messages: list[dict], max_tokens: int) -> tuple[float, float, str, int]:
    """(time to first text, total time, text, completion tokens) of one streamed greedy request."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    t0, first, text, tokens = time.perf_counter(), None, "", 0
    chunks = client.chat.completions.create(
        model="minicpm-v4.6",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in chunks:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content or getattr(choice.delta, "reasoning_content", None) or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text += choice.delta.content or ""
    return first or float("nan"), time.perf_counter() - t0, text, tokens


def cache_rows(url: str) -> dict:
    rows = {"new image": [], "resent": [], "seen image": []}
    for r in range(REPEATS):
        img = image_uri(1000 + r)
        ttft, _, reply, _ = stream(url, [user(QUESTION, img)], 32)
        rows["new image"].append(ttft)
        history = [user(QUESTION, img), {"role": "assistant", "content": reply}, user(FOLLOW_UP)]
        rows["resent"].append(stream(url, history, 8)[0])
        rows["seen image"].append(stream(url, [user(OTHER, img)], 8)[0])
    return {k: median(v) for k, v in rows.items()}


def prepared_ttft(url: str) -> float:
    """Time to first token for a new image that the chat page prepared (POST /v1/images/prepare) 3 s before."""
    import httpx

    runs = []
    for r in range(REPEATS):
        img = image_uri(2000 + r)
        httpx.post(f"{url}/v1/images/prepare", json={"image_url": {"url": img}}, timeout=600).raise_for_status()
        time.sleep(3)
        runs.append(stream(url, [user(QUESTION, img)], 8)[0])
    return median(runs)


def decode_tps(url: str) -> float:
    runs = []
    for _ in range(REPEATS):
        ttft, total, _, tokens = stream(url, [user("Write a long story about a lighthouse.")], DECODE_TOKENS)
        runs.append((tokens - 1) / (total - ttft))
    return median(runs)


def aggregate_tps(url: str, clients: int) -> float:
    done: list[int] = []

    def one(i: int) -> None:
        done.append(stream(url, [user(f"Tell story number {i} about the sea.")], CLIENT_TOKENS)[3])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def measure(name: str, cmd: list[str], port: int, parallel_cmd: list[str] | None) -> dict:
    print(f"{name} ...", file=sys.stderr)
    server = Server(cmd, port)
    try:
        row = {"name": name, **cache_rows(server.url), "decode_tps": decode_tps(server.url)}
        if "minicpmv_gguf.cli" in cmd:  # ours only: llama-server has no way to encode an image ahead
            row["prepared image"] = prepared_ttft(server.url)
        for n in (1, 2, 4):
            row[f"agg{n}"] = aggregate_tps(server.url, n)
        row["peak_rss_gb"] = server.peak_rss_gb()
    finally:
        server.stop()
    if parallel_cmd:  # llama-server with four slots: its best case for concurrent clients
        port = free_port()
        server = Server([*parallel_cmd, "--port", str(port)], port)
        try:
            row["agg4_np4"] = aggregate_tps(server.url, 4)
        finally:
            server.stop()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", type=Path, required=True)
    ap.add_argument("--mmproj", type=Path, required=True)
    ap.add_argument("--llama-server", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-repack", action="store_true", help="pass --no-repack to llama-server (AMX CPUs)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    ctx = "4096"
    load_before = os.getloadavg()[0]
    port = free_port()
    ours = [sys.executable, "-m", "minicpmv_gguf.cli", "serve", str(a.lm), "--mmproj", str(a.mmproj)]
    ours += ["--threads", str(a.threads), "--ctx", ctx, "--port", str(port)]
    theirs = [str(a.llama_server), "-m", str(a.lm), "--mmproj", str(a.mmproj), "-t", str(a.threads), "-c", ctx]
    theirs += ["--reasoning", "off", "--host", "127.0.0.1"] + (["--no-repack"] if a.no_repack else [])
    rows = [measure("minicpmv-gguf serve", ours, port, None)]
    port = free_port()
    rows.append(
        measure(
            "llama-server (-np 1)",
            [*theirs, "-np", "1", "--port", str(port)],
            port,
            [*theirs, "-np", "4", "-c", str(4 * int(ctx))],
        )
    )
    meta = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": a.threads,
        "load_before": load_before,
        "python": platform.python_version(),
        "lm": a.lm.name,
        "mmproj": a.mmproj.name,
        "no_repack": a.no_repack,
    }
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "server.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# serve vs llama-server",
        "",
        f"- {meta['cpu']}, {meta['cores']} cores, {a.threads} threads, load {load_before:.2f} before; "
        f"{a.lm.name} + {a.mmproj.name}; medians of {REPEATS}; greedy; streamed through the openai client",
        "",
        "| server | TTFT new image | TTFT resent | TTFT seen image | decode tok/s "
        "| agg 1 | agg 2 | agg 4 | agg 4 (-np 4) | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['new image']:.2f} s | {r['resent']:.2f} s | {r['seen image']:.2f} s | "
            f"{r['decode_tps']:.1f} | {r['agg1']:.1f} | {r['agg2']:.1f} | {r['agg4']:.1f} | "
            f"{r.get('agg4_np4', float('nan')):.1f} | {r['peak_rss_gb']:.2f} GB |"
        )
    ours_r, theirs_r = rows
    lines += [
        "",
        f"Encode ahead (ours): TTFT for a new image prepared 3 s before the question: "
        f"{ours_r['prepared image']:.2f} s (without: {ours_r['new image']:.2f} s).",
    ]
    lines += [
        "",
        "Ratios (ours / llama-server): "
        + ", ".join(
            f"{k} {ours_r[k] / theirs_r[k]:.2f}x"
            for k in ("new image", "resent", "seen image", "decode_tps", "peak_rss_gb")
        ),
    ]
    (a.results / "server.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
