"""What quantizing the vision tower costs, per mmproj type and mode.

Part 1, the trained tiny VLM (examples/minicpmv46-tiny-vlm): greedy answers to held-out generated
scenes (examples/scenes.py) through the runtime with an F32 LM, against the right answer and against
the F32 mmproj's answer; embedding cosine (worst token) and NMSE (mean over images) against F32; file size.
Part 2, the full-size random-weight checkpoint (benchmarks/make_full_size_checkpoint.py) with the
Q4_K_M LM of a full build: file size, encode time of one 448x448 image (median of --repeats, mmproj
kept), time to first token with the mmproj kept (as `serve` does) and loaded for the turn (as `run` and
`chat` do by default), and peak RSS of one image turn with default settings, each type in a fresh
process; transformers' encode of the same image beside them. With --avx2-site (a directory holding a
llama-cpp-python built with GGML_NATIVE=OFF, AVX2 on, AVX-512 off: `pip install --target`), every
row runs again on that build, and transformers with oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA), so
both CPU classes are measured in one run on one machine.

    python benchmarks/bench_vision_quant.py --tiny --n 200
    python benchmarks/bench_vision_quant.py --full --ckpt FULL_CKPT --lm BUILD/lm-Q4_K_M.gguf [--avx2-site DIR]
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


def answers(lm: Path, mmproj: Path, samples, threads: int, render=None) -> list[str]:
    """Greedy replies (up to 6 tokens) to each (scene, question, answer), one fresh conversation each."""
    import scenes

    from minicpmv_gguf.runtime import GREEDY, open_model

    render = render or scenes.render
    out = []
    with open_model(lm, [mmproj], threads=threads) as model:
        for scene, q, _ in samples:
            with model.chat(n_ctx=512, sampling=GREEDY, max_tokens=6) as chat:
                out.append(chat.send(q, images=[render(scene)]).text)
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
                    "accuracy": share_right(got, held),
                    "same_as_f32": sum(g == r for g, r in zip(got, ref_answers)) / n,
                    "min_cos": min(float(cosine_rows(e, r).min()) for e, r in zip(emb, ref_emb)),
                    "nmse": sum(nmse(e, r) for e, r in zip(emb, ref_emb)) / len(emb),
                    "seconds": secs,
                }
                if t == "f32":  # the answer prior: the same questions about a blank image
                    got = answers(lm, mm, held, threads, blank)
                    row["blank_accuracy"] = share_right(got, held)
                print(json.dumps(row), flush=True)
                rows.append(row)
        rows += default_build(Path(tmp) / "build", held, threads)
    return rows


def default_build(out: Path, held, threads: int) -> list[dict]:
    """What `build` writes by default (Q4_K_M LM, the default mmproj type), both modes: the demo's files."""

    from minicpmv_gguf.pipeline import build

    build(TINY, out, modes=("16x", "4x"), ollama=False)
    lm = out / "lm-Q4_K_M.gguf"
    rows = []
    for mode in MODES:
        mm = out / f"mmproj-{mode}.gguf"
        got = answers(lm, mm, held, threads)
        row = {
            "mode": mode,
            "type": "build default",
            "bytes": mm.stat().st_size + lm.stat().st_size,
            "accuracy": share_right(got, held),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def share_right(replies: list[str], samples) -> float:
    import scenes

    return sum(scenes.answer_matches(r, a) for r, (_, _, a) in zip(replies, samples)) / len(samples)


def blank(_scene):
    import scenes

    return scenes.blank()


def full_worker(spec: dict) -> dict:
    import llama_cpp
    from bench_encode import make_image, worker_hf

    from minicpmv_gguf.runtime import GREEDY, open_model

    if spec["engine"] == "transformers":
        res = worker_hf(
            {
                "ckpt": spec["ckpt"],
                "type": spec["type"],
                "mode": spec["mode"],
                "threads": spec["threads"],
                "repeat": spec["repeats"],
            }
        )
        return {"encode_s": median(res["times_s"]), "turn_peak_rss_gb": res["peak_rss_gb"]}
    avx512 = b"AVX512 = 1" in llama_cpp.llama_print_system_info()

    img = make_image()  # bench_encode's seeded 448x448 image, so both benchmarks encode the same pixels
    model = open_model(spec["lm"], [spec["mmproj"]], threads=spec["threads"])
    with model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1) as first:  # default settings: mmproj freed
        cold = first.send("What is in the picture?", images=[img]).timings
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    loaded = []  # what `run` and `chat` do: the mmproj is loaded for each image turn and freed after it
    for _ in range(spec.get("repeats", 3)):
        with model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1) as turn:
            loaded.append(turn.send("What is in the picture?", images=[img]).timings)
    chat = model.chat(n_ctx=4096, sampling=GREEDY, max_tokens=1, keep_vision=True)
    chat.send("Hi", images=[img])
    runs = []
    for _ in range(spec.get("repeats", 3)):
        chat.reset()
        runs.append(chat.send("What is in the picture?", images=[img]).timings)
    return {
        "llama_cpp": str(Path(llama_cpp.__file__).parent),
        "avx512": avx512,
        "turn_peak_rss_gb": rss,
        "cold_encode_s": cold.encode_s,
        "encode_s": median(r.encode_s for r in runs),
        "ttft_s": median(r.first_token_s for r in runs),
        "ttft_loaded_s": median(r.first_token_s for r in loaded),
    }


def run_worker(spec: dict, cpu: str, avx2_site: Path | None) -> dict:
    """One row in a fresh interpreter: `cpu` "native" uses this venv's llama.cpp and oneDNN as they are,
    "avx2" puts `avx2_site` first on the path and caps oneDNN at AVX2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    if cpu == "avx2":
        env["PYTHONPATH"] = f"{avx2_site}{os.pathsep}{env['PYTHONPATH']}"
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE, text=True, env=env
    )
    if proc.returncode != 0:
        return {"failed": proc.returncode}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if cpu == "avx2" and res.get("avx512"):
        raise SystemExit(f"{avx2_site}: its llama.cpp uses AVX-512; build it with GGML_NATIVE=OFF GGML_AVX512=OFF")
    return res


def full(
    ckpt: Path, lm: Path, threads: int, rows_wanted: list[tuple[str, str]], repeats: int, avx2_site: Path | None
) -> list[dict]:
    from minicpmv_gguf.mmproj import convert_mmproj

    cpus = ["native", "avx2"] if avx2_site else ["native"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, t in rows_wanted:
            base = {"mode": mode, "type": t, "threads": threads, "repeats": repeats}
            if t in ("hf-bf16", "hf-fp32"):
                spec, extra = {**base, "engine": "transformers", "ckpt": str(ckpt), "type": t[3:]}, {"bytes": None}
            else:
                mm = Path(tmp) / f"mm-{mode}-{t}.gguf"
                convert_mmproj(ckpt, mm, mode=mode, outtype=t)
                spec, extra = {**base, "engine": "mtmd", "lm": str(lm), "mmproj": str(mm)}, {"bytes": mm.stat().st_size}
            for cpu in cpus:
                row = {"mode": mode, "type": t, "cpu": cpu, **extra, **run_worker(spec, cpu, avx2_site)}
                print(json.dumps(row), flush=True)
                rows.append(row)
            if spec["engine"] == "mtmd":
                mm.unlink()
    return rows


def table_tiny(rows: list[dict], n: int) -> str:
    blanks = ", ".join(f"{r['mode']} {r['blank_accuracy']:.1%}" for r in rows if "blank_accuracy" in r)
    lines = [
        f"{n} held-out questions per row, greedy, F32 LM unless said. The same questions about a blank image "
        f"score {blanks} (F32 mmproj): the answer prior.",
        "",
        "| mode | type | file | answer accuracy | same answer as F32 | worst token cosine vs F32 | NMSE vs F32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "min_cos" not in r:  # a default-build row: LM + mmproj, answers only
            lines.append(
                f"| {r['mode']} | {r['type']} (LM + mmproj) | {r['bytes'] / 1e6:.2f} MB | {r['accuracy']:.1%} | | | |"
            )
            continue
        lines.append(
            f"| {r['mode']} | {r['type'].upper()} | {r['bytes'] / 1e6:.2f} MB | {r['accuracy']:.1%} | "
            f"{r['same_as_f32']:.1%} | {r['min_cos']:.5f} | {r['nmse']:.2e} |"
        )
    return "\n".join(lines)


def table_full(rows: list[dict]) -> str:
    lines = [
        "| mode | mmproj type | CPU class | file | encode 448x448 | TTFT, mmproj kept (serve) "
        "| TTFT, mmproj loaded for the turn (run, chat) | peak RSS, one image turn |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = f"transformers {r['type'][3:]}" if r["type"].startswith("hf-") else r["type"].upper()
        size = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.0f} MB"
        head = f"| {r['mode']} | {name} | {r['cpu']} | {size} |"
        if "failed" in r:
            lines.append(f"{head} failed (exit {r['failed']}) | | | |")
        elif "ttft_s" not in r:  # transformers: the vision path only
            lines.append(f"{head} {r['encode_s']:.2f} s | | | {r['turn_peak_rss_gb']:.2f} GB (encode only) |")
        else:
            lines.append(
                f"{head} {r['encode_s']:.2f} s | {r['ttft_s']:.2f} s | {r['ttft_loaded_s']:.2f} s | "
                f"{r['turn_peak_rss_gb']:.2f} GB |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--n", type=int, default=200, help="held-out questions per type and mode")
    p.add_argument("--n-embed", type=int, default=20, help="images for the embedding comparison")
    p.add_argument("--ckpt", type=Path, help="the full-size checkpoint (--full)")
    p.add_argument("--lm", type=Path, help="the Q4_K_M LM of a full-size build (--full)")
    p.add_argument(
        "--full-rows",
        default=",".join([*(f"16x:{t}" for t in TYPES), "4x:f16", "4x:q8_0", "4x:q4_0", "16x:hf-bf16", "16x:hf-fp32"]),
        help="MODE:TYPE rows for --full; hf-bf16 / hf-fp32 are transformers' encode",
    )
    p.add_argument("--avx2-site", type=Path, help="a directory with an AVX2-only llama-cpp-python (see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed image turns per type (median)")
    p.add_argument("--update", action="store_true", help="--full: replace only the rows measured now")
    p.add_argument("--worker")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(full_worker(json.loads(args.worker))))
        return 0
    RESULTS.mkdir(exist_ok=True)
    if args.tiny:
        rows = tiny(args.n, args.n_embed, args.threads)
        (RESULTS / "vision_quant_tiny.json").write_text(json.dumps(rows, indent=1) + "\n")
        (RESULTS / "vision_quant_tiny.md").write_text(table_tiny(rows, args.n) + "\n")
        print(table_tiny(rows, args.n))
    if args.full:
        if not (args.ckpt and args.lm):
            p.error("--full needs --ckpt and --lm")
        wanted = [tuple(r.split(":", 1)) for r in args.full_rows.split(",")]
        rows = full(args.ckpt, args.lm, args.threads, wanted, args.repeats, args.avx2_site)
        if args.update:  # re-measured rows replace their namesakes, the rest of the table stays
            fresh = {(r["mode"], r["type"], r["cpu"]) for r in rows}
            old = json.loads((RESULTS / "vision_quant_full.json").read_text())
            kept = [r for r in old if (r["mode"], r["type"], r["cpu"]) not in fresh]
            rows = [*kept, *rows]
        (RESULTS / "vision_quant_full.json").write_text(json.dumps(rows, indent=1) + "\n")
        (RESULTS / "vision_quant_full.md").write_text(table_full(rows) + "\n")
        print(table_full(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
