"""What quantizing the vision tower costs, per mmproj type and mode.

Part 1, the trained tiny VLM (examples/minicpmv46-tiny-vlm): greedy answers to held-out generated
scenes (examples/scenes.py) through the runtime with an F32 LM, against the right answer and against
the F32 mmproj's answer; embedding cosine (worst token) and NMSE (mean over images) against F32; file size.
Part 2, the full-size random-weight checkpoint (benchmarks/make_full_size_checkpoint.py) with the
Q4_K_M LM of a full build: 16x file size, encode time of one 448x448 image (median of 3, mmproj
kept) and peak RSS of one image turn with default settings, each type in a fresh process.

    python benchmarks/bench_vision_quant.py --tiny --n 200
    python benchmarks/bench_vision_quant.py --full --ckpt FULL_CKPT --lm BUILD/lm-Q4_K_M.gguf --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))
TYPES = ["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0", "iq4_nl"]
MODES = ["16x", "4x"]
TINY = REPO / "examples" / "minicpmv46-tiny-vlm"
RESULTS = Path(__file__).parent / "results"


def answers(lm: Path, mmproj: Path, samples, threads: int) -> list[str]:
    """Greedy replies (up to 6 tokens) to each (scene, question, answer), one fresh conversation each."""
    import scenes

    from minicpmv_gguf.runtime import GREEDY, open_model

    out = []
    with open_model(lm, [mmproj], threads=threads) as model:
        for scene, q, _ in samples:
            with model.chat(n_ctx=512, sampling=GREEDY, max_tokens=6) as chat:
                out.append(chat.send(q, images=[scenes.render(scene)]).text)
    return out


def embeddings(lm: Path, mmproj: Path, samples) -> list:
    import numpy as np
    import scenes

    from minicpmv_gguf.verify.reference import load_llama
    from minicpmv_gguf.verify.vision import mtmd_image_embeddings

    llm = load_llama(lm, n_ctx=512, logits_all=False)
    return [np.concatenate(mtmd_image_embeddings(llm, mmproj, scenes.render(s))) for s, _, _ in samples]


def tiny(n: int, n_embed: int, threads: int) -> list[dict]:
    import scenes

    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.metrics import cosine_rows, nmse
    from minicpmv_gguf.mmproj import convert_mmproj

    held = scenes.held_out(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lm = Path(tmp) / "lm-f32.gguf"
        convert_lm(TINY, lm, outtype="f32")
        for mode in MODES:
            ref_answers = ref_emb = None
            for t in TYPES:
                mm = Path(tmp) / f"mm-{mode}-{t}.gguf"
                convert_mmproj(TINY, mm, mode=mode, outtype=t)
                t0 = time.perf_counter()
                got = answers(lm, mm, held, threads)
                secs = time.perf_counter() - t0
                emb = embeddings(lm, mm, held[:n_embed])
                ref_answers = got if ref_answers is None else ref_answers
                ref_emb = emb if ref_emb is None else ref_emb
                row = {
                    "mode": mode,
                    "type": t,
                    "bytes": mm.stat().st_size,
                    "accuracy": sum(scenes.answer_matches(g, a) for g, (_, _, a) in zip(got, held)) / n,
                    "same_as_f32": sum(g == r for g, r in zip(got, ref_answers)) / n,
                    "min_cos": min(float(cosine_rows(e, r).min()) for e, r in zip(emb, ref_emb)),
                    "nmse": sum(nmse(e, r) for e, r in zip(emb, ref_emb)) / len(emb),
                    "seconds": secs,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def full_worker(spec: dict) -> dict:
    import numpy as np

    from minicpmv_gguf.runtime import GREEDY, open_model

    img = np.random.default_rng(0).integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
    model = open_model(spec["lm"], [spec["mmproj"]], threads=spec["threads"])
    with model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1) as first:  # default settings: mmproj freed
        cold = first.send("What is in the picture?", images=[img]).timings
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    chat = model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1, keep_vision=True)
    chat.send("Hi", images=[img])
    runs = []
    for _ in range(spec.get("repeats", 3)):
        chat.reset()
        runs.append(chat.send("What is in the picture?", images=[img]).timings)
    return {
        "turn_peak_rss_gb": rss,
        "cold_encode_s": cold.encode_s,
        "encode_s": median(r.encode_s for r in runs),
        "ttft_s": median(r.first_token_s for r in runs),
    }


def full(ckpt: Path, lm: Path, threads: int, types: list[str], repeats: int = 3) -> list[dict]:
    from minicpmv_gguf.mmproj import convert_mmproj

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in types:
            mm = Path(tmp) / f"mm-16x-{t}.gguf"
            t0 = time.perf_counter()
            convert_mmproj(ckpt, mm, mode="16x", outtype=t)
            conv = time.perf_counter() - t0
            spec = {"lm": str(lm), "mmproj": str(mm), "threads": threads, "repeats": repeats}
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            res = (
                json.loads(proc.stdout.strip().splitlines()[-1])
                if proc.returncode == 0
                else {"failed": proc.returncode}
            )
            row = {"type": t, "bytes": mm.stat().st_size, "convert_s": conv, **res}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table_tiny(rows: list[dict]) -> str:
    lines = [
        "| mode | type | file | answer accuracy | same answer as F32 | worst token cosine vs F32 | NMSE vs F32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['type'].upper()} | {r['bytes'] / 1e6:.2f} MB | {r['accuracy']:.1%} | "
            f"{r['same_as_f32']:.1%} | {r['min_cos']:.5f} | {r['nmse']:.2e} |"
        )
    return "\n".join(lines)


def table_full(rows: list[dict]) -> str:
    lines = [
        "| 16x type | file | encode 448x448 | first encode | TTFT | peak RSS, one image turn |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['type'].upper()} | {r['bytes'] / 1e6:.0f} MB | failed (exit {r['failed']}) | | | |")
            continue
        lines.append(
            f"| {r['type'].upper()} | {r['bytes'] / 1e6:.0f} MB | {r['encode_s']:.2f} s | {r['cold_encode_s']:.2f} s | "
            f"{r['ttft_s']:.2f} s | {r['turn_peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--n", type=int, default=200, help="held-out questions per type and mode")
    p.add_argument("--n-embed", type=int, default=20, help="images for the embedding comparison")
    p.add_argument("--ckpt", type=Path, default=Path("/work/cache/full-ckpt"))
    p.add_argument("--lm", type=Path, default=Path("/work/cache/full-build/lm-Q4_K_M.gguf"))
    p.add_argument("--full-types", default=",".join(TYPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed image turns per type (median)")
    p.add_argument("--worker")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(full_worker(json.loads(args.worker))))
        return 0
    RESULTS.mkdir(exist_ok=True)
    if args.tiny:
        rows = tiny(args.n, args.n_embed, args.threads)
        (RESULTS / "vision_quant_tiny.json").write_text(json.dumps(rows, indent=1) + "\n")
        (RESULTS / "vision_quant_tiny.md").write_text(table_tiny(rows) + "\n")
        print(table_tiny(rows))
    if args.full:
        rows = full(args.ckpt, args.lm, args.threads, args.full_types.split(","), args.repeats)
        (RESULTS / "vision_quant_full.json").write_text(json.dumps(rows, indent=1) + "\n")
        (RESULTS / "vision_quant_full.md").write_text(table_full(rows) + "\n")
        print(table_full(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
