#!/usr/bin/env python3
"""End-to-end chat speed: our runtime (llama.cpp + libmtmd, Q4_K_M LM) against transformers bf16/fp32.

    python benchmarks/bench_runtime.py CHECKPOINT --lm LM.gguf --mmproj-dir DIR [--threads 2]
                                      [--only NAME,...] [--results DIR]

Each configuration runs in its own subprocess (peak RSS is per configuration):
- text: a prompt of PROMPT_TOKENS tokens (chat template included) -> prefill tok/s; then exactly
  NEW_TOKENS greedy tokens (unless EOS comes first; the count is reported) -> decode tok/s.
- image: one seeded random 448x448 image + a short question -> time to first token (encode + prefill)
  and image encode time. Our runtime: one warm-up image turn first, mmproj kept loaded, so the timed
  encode excludes loading the mmproj (the cold first turn's encode, load included, is in the JSON).
- transformers: prefill = one forward over the same number of token ids; decode = generate(64, greedy,
  min_new_tokens=64) minus that prefill; image TTFT = generate(max_new_tokens=1) with the processor's inputs.
Writes benchmarks/results/runtime.md and runtime.json (core count and load average included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, RESULTS, fmt, package_version, ratio  # noqa: E402
from bench_encode import cpu_model, peak_rss_gb  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS, SIDE = 256, 64, 448
REPEATS = 3  # timed runs per measurement (not transformers' 64-token generate); the median is reported
QUESTION = "Describe the image."
# name -> (engine, variant): ours rows: "text" or an mmproj file stem; hf rows: torch dtype
CONFIGS = {
    "ours Q4_K_M text": ("ours", "text"),
    "ours Q4_K_M + 16x f16": ("ours", "mmproj-16x-f16"),
    "ours Q4_K_M + 16x q8_0": ("ours", "mmproj-16x-q8_0"),
    "ours Q4_K_M + 16x bf16": ("ours", "mmproj-16x-bf16"),
    "ours Q4_K_M + 4x f16": ("ours", "mmproj-4x-f16"),
    "ours Q4_K_M + 4x q8_0": ("ours", "mmproj-4x-q8_0"),
    "ours Q4_K_M + 4x bf16": ("ours", "mmproj-4x-bf16"),
    "transformers bf16": ("hf", "bf16"),
    "transformers fp32": ("hf", "fp32"),
}
REFERENCE = "transformers bf16"


def image(seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)


def filler(n_words: int) -> str:
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing near an old river".split()
    return " ".join(words[i % len(words)] for i in range(n_words))


def repeated(chat, ask) -> list:
    """The Timings of REPEATS replies to `ask()`, each in a conversation reset first."""
    runs = []
    for _ in range(REPEATS):
        chat.reset()
        runs.append(ask().timings)
    return runs


def worker_ours(spec: dict) -> dict:
    from minicpmv_gguf.runtime import GREEDY, open_model

    t0 = time.perf_counter()
    mm = [str(Path(spec["mmproj_dir"]) / f"{spec['variant']}.gguf")] if spec["variant"] != "text" else []
    model = open_model(spec["lm"], mm, threads=spec["threads"])
    out = {"load_s": time.perf_counter() - t0}
    if spec["variant"] != "text":  # before any other context exists, as in a user's first turn
        with model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1) as first:  # default: mmproj freed after encoding
            cold = first.send(QUESTION, images=[image(1)]).timings  # also the warm-up (page cache, allocations)
        out["turn_peak_rss_gb"] = peak_rss_gb()  # the issue's figure: one image turn with default settings
    chat = model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=NEW_TOKENS, keep_vision=True)
    if spec["variant"] == "text":
        text, lo, hi = filler(PROMPT_TOKENS), 1, len(filler(PROMPT_TOKENS))
        while lo < hi:  # longest prefix of the filler whose whole prompt fits in PROMPT_TOKENS tokens
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(chat.prompt_ids(text[:mid])) <= PROMPT_TOKENS else (lo, mid - 1)
        chat.send("Hello.", max_tokens=4)  # warm-up: first-use allocations
        runs = repeated(chat, lambda: chat.send(text[:lo]))
        t = runs[0]
        out.update(
            prompt_tokens=t.prompt_tokens,
            prefill_s=median(r.prefill_s for r in runs),
            prefill_tps=median(r.prefill_tokens_per_s for r in runs),
            new_tokens=t.generated_tokens,
            decode_s=median(r.decode_s for r in runs),
            decode_tps=median(r.decode_tokens_per_s for r in runs),
            prefill_tps_runs=[r.prefill_tokens_per_s for r in runs],
            decode_tps_runs=[r.decode_tokens_per_s for r in runs],
        )
    else:
        chat.send(QUESTION, images=[image(1)], max_tokens=1)  # loads the mmproj into `chat` (kept)
        runs = repeated(chat, lambda: chat.send(QUESTION, images=[image(0)], max_tokens=1))
        t = runs[0]
        out.update(
            cold_encode_s=cold.encode_s,
            image_tokens=t.image_tokens,
            prompt_tokens=t.prompt_tokens,
            encode_s=median(r.encode_s for r in runs),
            image_prefill_s=median(r.prefill_s for r in runs),
            ttft_s=median(r.first_token_s for r in runs),
            ttft_s_runs=[r.first_token_s for r in runs],
        )
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def worker_hf(spec: dict) -> dict:
    import torch
    from PIL import Image
    from transformers import MiniCPMV4_6ForConditionalGeneration

    from minicpmv_gguf.verify.reference import load_processor

    torch.set_num_threads(spec["threads"])
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["variant"]]
    t0 = time.perf_counter()
    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(spec["ckpt"], dtype=dtype).eval()
    proc = load_processor(Path(spec["ckpt"]), pil=True)
    out = {"load_s": time.perf_counter() - t0}
    ids = proc.tokenizer(filler(PROMPT_TOKENS * 2), return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    with torch.inference_mode():
        model(input_ids=ids[:, :16])  # warm-up
        prefills = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            model(input_ids=ids)
            prefills.append(time.perf_counter() - t0)
        prefill = median(prefills)
        t0 = time.perf_counter()
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
        total = time.perf_counter() - t0
    n_new = gen.shape[1] - ids.shape[1]
    out.update(
        prompt_tokens=ids.shape[1],
        prefill_s=prefill,
        prefill_tps=ids.shape[1] / prefill,
        new_tokens=n_new,
        generate_s=total,
        decode_s=total - prefill,
        decode_tps=n_new / (total - prefill),
    )
    if spec.get("image", True):
        try:
            msgs = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": Image.fromarray(image(0))},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ]
            inputs = proc.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            ttfts = []
            with torch.inference_mode():
                for _ in range(REPEATS):
                    t0 = time.perf_counter()
                    model.generate(**inputs, max_new_tokens=1, do_sample=False)
                    ttfts.append(time.perf_counter() - t0)
            out.update(ttft_s=median(ttfts), ttft_s_runs=ttfts)
            out["prompt_tokens_image"] = int(inputs["input_ids"].shape[1])
        except Exception as e:  # noqa: BLE001 - report, keep the text numbers
            out["image_error"] = f"{type(e).__name__}: {e}"[:300]
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def report(rows: list[dict], meta: dict) -> str:
    ref = next((r for r in rows if r["name"] == REFERENCE and r["returncode"] == 0), {})
    lines = [
        "# Runtime benchmark: prefill, decode, time to first token with an image",
        "",
        f"- checkpoint `{meta['checkpoint']}` (random weights, full size); LM `{meta['lm']}`",
        f"- {meta['machine']}, {meta['cpus']} CPUs, {meta['threads']} threads; load average (1/5/15 min) "
        f"{meta['load_avg_before']} before, {meta['load_avg_after']} after; {meta['date']}",
        f"- llama-cpp-python {meta['llama_cpp_python']}, torch {meta['torch']}, transformers {meta['transformers']}",
        f"- text: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} greedy new tokens; image: seeded random {SIDE}×{SIDE} "
        f'RGB + "{QUESTION}"; load = open the LM (ours) or from_pretrained + processor (transformers); '
        "TTFT = encode + prefill + first token (warm, mmproj already loaded for ours)",
        "- peak RSS, one image turn: after a first chat's single image turn with default settings (LM, mmproj "
        "loaded, one encode, mmproj freed); whole row: after every turn (the timed chat keeps the mmproj loaded)",
        f"- prefill, TTFT and encode: median of {REPEATS} runs; decode: ours median of {REPEATS}, transformers one "
        f"{NEW_TOKENS}-token generate",
        "- each row in its own process; ratios are × the transformers bf16 value (higher = faster for tok/s, "
        "lower = faster for seconds)",
        "",
        "| config | load s | prefill tok/s | decode tok/s (tokens) | TTFT with image s | image encode s | "
        "peak RSS GB, one image turn | peak RSS GB, whole row "
        "| prefill × bf16 | decode × bf16 | TTFT × bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["returncode"] != 0:
            lines.append(f"| {r['name']} | failed (exit {r['returncode']}) | | | | | | | | | |")
            continue
        dec = f"{fmt(r.get('decode_tps'), '.1f')} ({r['new_tokens']})" if "new_tokens" in r else "—"
        lines.append(
            f"| {r['name']} | {fmt(r.get('load_s'), '.1f')} | {fmt(r.get('prefill_tps'), '.1f')} | {dec} | "
            f"{fmt(r.get('ttft_s'), '.2f')} | {fmt(r.get('encode_s'), '.2f')} | "
            f"{fmt(r.get('turn_peak_rss_gb'), '.2f')} | {fmt(r.get('peak_rss_gb'), '.2f')} | "
            f"{ratio(r.get('prefill_tps'), ref.get('prefill_tps'))} | "
            f"{ratio(r.get('decode_tps'), ref.get('decode_tps'))} | "
            f"{ratio(r.get('ttft_s'), ref.get('ttft_s'))} |"
        )
    notes = [f"- {r['name']}: image row failed: {r['image_error']}" for r in rows if r.get("image_error")]
    notes += [f"- skipped: {s}" for s in meta.get("skipped", [])]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--lm", type=Path, help="the LM GGUF for our rows (Q4_K_M)")
    ap.add_argument("--mmproj-dir", type=Path, help="holds mmproj-{16x,4x}-{type}.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated config names")
    ap.add_argument("--no-hf-image", action="store_true", help="skip transformers' image TTFT")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((worker_ours if spec["engine"] == "ours" else worker_hf)(spec)))
        return 0
    if args.checkpoint is None or not args.lm or not args.mmproj_dir:
        ap.error("CHECKPOINT, --lm and --mmproj-dir are required")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CONFIGS)
    if unknown := set(names) - set(CONFIGS):
        ap.error(f"unknown config(s) {sorted(unknown)}; known: {list(CONFIGS)}")
    logdir = CACHE / "runtime"  # per-row stderr logs
    logdir.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    rows = []
    for name in names:
        engine, variant = CONFIGS[name]
        spec = {
            "engine": engine,
            "variant": variant,
            "threads": args.threads,
            "ckpt": str(args.checkpoint.resolve()),
            "lm": str(args.lm.resolve()),
            "mmproj_dir": str(args.mmproj_dir.resolve()),
            "image": not args.no_hf_image,
        }
        rows.append(_run(name, spec, logdir))
    meta = {
        "checkpoint": str(args.checkpoint),
        "lm": str(args.lm),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "machine": f"{platform.system()} {platform.machine()} ({cpu_model()})",
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "llama_cpp_python": package_version("llama-cpp-python"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "skipped": sorted(set(CONFIGS) - set(names)),
        "total_s": round(time.perf_counter() - start, 1),
    }
    md = report(rows, meta)
    print("\n" + md + f"\ntotal {meta['total_s']} s")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "runtime.md").write_text(md)
    (args.results / "runtime.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.results / 'runtime.md'} and runtime.json")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def _run(name: str, spec: dict, logdir: Path) -> dict:
    """As bench_encode.run_config: a fresh interpreter per row; its last stdout line is the JSON result."""
    import subprocess

    print(f"[{name}] ...", end=" ", flush=True)
    with open(logdir / f"{name.replace(' ', '-')}.log", "w") as err:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if proc.returncode != 0:
        print(f"FAILED (exit {proc.returncode})")
        return {"name": name, **spec, "returncode": proc.returncode}
    res = {"name": name, **spec, "returncode": 0, **json.loads(proc.stdout.strip().splitlines()[-1])}
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items() if k not in spec})
    return res


if __name__ == "__main__":
    sys.exit(main())
