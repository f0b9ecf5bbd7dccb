#!/usr/bin/env python3
"""Time the vision encoder: llama.cpp (libmtmd) with each mmproj type against transformers.

    python benchmarks/bench_encode.py CHECKPOINT [--workdir DIR] [--repeat 3] [--threads 2]
                                     [--flash-attn auto|on|off] [--only NAME,...] [--results DIR]

1. Converts with our CLI (skipped when the file exists): the LM at F16, the 16x mmproj at F32, F16,
   BF16 and Q8_0, the 4x mmproj at F16.
2. Each configuration runs in its own subprocess (so peak RSS is per configuration) and encodes one
   seeded random 448x448 RGB image: one warm-up encode, then the median of --repeat timed ones.
   - llama.cpp: LM + mmproj loaded through llama-cpp-python; the image goes in raw through
     `mtmd_bitmap_init`; only `mtmd_encode_chunk` is timed (not loading, not preprocessing).
   - transformers bf16 and fp32: vision path only (`get_image_features`, 16x), the processor's
     pixel_values computed once outside the timed region; same thread count (`torch.set_num_threads`).
3. Writes benchmarks/results/encode.md and encode.json (core count and load average included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, HERE, RESULTS, fmt, package_version, ratio  # noqa: E402

SIDE, SEED = 448, 0
# name -> (engine, mode, type): mtmd rows read mmproj-{mode}-{type}.gguf; hf rows load the checkpoint.
CONFIGS = {
    "mtmd 16x f32": ("mtmd", "16x", "f32"),
    "mtmd 16x f16": ("mtmd", "16x", "f16"),
    "mtmd 16x bf16": ("mtmd", "16x", "bf16"),
    "mtmd 16x q8_0": ("mtmd", "16x", "q8_0"),
    "mtmd 4x f16": ("mtmd", "4x", "f16"),
    "transformers 16x bf16": ("hf", "16x", "bf16"),
    "transformers 16x fp32": ("hf", "16x", "fp32"),
}
REFERENCE = "transformers 16x bf16"  # the ratio column divides by this row's median
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type; clip resolves auto to "on" on CPU


def make_image():
    import numpy as np

    return np.random.default_rng(SEED).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)


def cpu_model() -> str:
    try:  # Linux; platform.processor() is usually empty there
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def rss_now_gb() -> float | None:
    try:
        status = open("/proc/self/status").read()
        return next(int(ln.split()[1]) * 1024 / 1e9 for ln in status.splitlines() if ln.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def timed_repeats(encode, repeat: int) -> dict:
    """Warm-up, then `repeat` timed calls; cpu_per_wall (all threads' CPU s / wall s) below the thread
    count means the run waited for a core, i.e. other work on the machine inflated its time."""
    encode()  # warm-up: first-use allocations (clip builds its compute graph on the first encode)
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        encode()
        times.append(time.perf_counter() - t0)
        cpu.append((time.process_time() - c0) / times[-1])
    return {"times_s": times, "cpu_per_wall": cpu}


def worker_mtmd(spec: dict) -> dict:
    import ctypes

    import llama_cpp.mtmd_cpp as M
    import numpy as np
    from llama_cpp import Llama

    # Small n_ctx: the LM is only needed for its vocabulary and width; its weights stay mmapped, untouched.
    llm = Llama(model_path=spec["lm"], n_ctx=512, n_threads=spec["threads"], n_gpu_layers=0, verbose=False)
    lm_rss = rss_now_gb()  # llama.cpp prefetches the mmapped LM, so its pages count in RSS too
    p = M.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, spec["threads"], False, False
    p.flash_attn_type = FLASH_ATTN[spec["flash_attn"]]
    ctx = M.mtmd_init_from_file(spec["mmproj"].encode(), llm.model, p)
    if not ctx:
        raise RuntimeError(f"mtmd_init_from_file failed for {spec['mmproj']}")
    rgb = make_image()
    bmp = M.mtmd_bitmap_init(SIDE, SIDE, (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes()))
    text, marker = M.mtmd_input_text(), M.mtmd_default_marker()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    chunks = M.mtmd_input_chunks_init()
    if M.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (M.mtmd_bitmap_p_ctypes * 1)(bmp), 1) != 0:
        raise RuntimeError("mtmd_tokenize failed")
    images = [
        c
        for c in (M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks)))
        if M.mtmd_input_chunk_get_type(c) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE
    ]
    assert len(images) == 1, f"a {SIDE}x{SIDE} image should be one chunk (no slices), got {len(images)}"

    def encode():
        if M.mtmd_encode_chunk(ctx, images[0]) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")

    timing = timed_repeats(encode, spec["repeat"])
    n_tok, n_embd = M.mtmd_input_chunk_get_n_tokens(images[0]), llm.n_embd()
    out = np.ctypeslib.as_array(M.mtmd_get_output_embd(ctx), shape=(n_tok * n_embd,))
    result = {
        "tokens": n_tok,
        **timing,
        "finite": bool(np.isfinite(out).all()),
        "peak_rss_gb": peak_rss_gb(),
        "rss_after_lm_load_gb": lm_rss,
    }
    M.mtmd_input_chunks_free(chunks)
    M.mtmd_bitmap_free(bmp)
    M.mtmd_free(ctx)
    return result


def worker_hf(spec: dict) -> dict:
    import torch
    from PIL import Image
    from transformers import MiniCPMV4_6ForConditionalGeneration
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    torch.set_num_threads(spec["threads"])
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["type"]]
    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(spec["ckpt"], dtype=dtype).eval()
    # AutoProcessor needs torchvision (video processor); the PIL image processor alone is enough here.
    pre = json.loads((Path(spec["ckpt"]) / "preprocessor_config.json").read_text())
    keys = ("max_slice_nums", "scale_resolution", "patch_size", "slice_mode", "image_mean", "image_std")
    proc = MiniCPMV4_6ImageProcessorPil(**{k: pre[k] for k in keys if k in pre})
    inputs = proc(images=[Image.fromarray(make_image())], downsample_mode=spec["mode"], return_tensors="pt")
    feats = []

    def encode():
        with torch.inference_mode():
            feats[:] = model.model.get_image_features(
                inputs["pixel_values"], inputs["target_sizes"], downsample_mode=spec["mode"]
            ).pooler_output

    timing = timed_repeats(encode, spec["repeat"])
    return {
        "tokens": sum(f.reshape(-1, f.shape[-1]).shape[0] for f in feats),
        **timing,
        "finite": all(bool(torch.isfinite(f).all()) for f in feats),
        "peak_rss_gb": peak_rss_gb(),
    }


def run_config(name: str, spec: dict, log: Path) -> dict:
    """Run one configuration in a fresh interpreter; its last stdout line is the JSON result."""
    print(f"[{name}] ...", end=" ", flush=True)
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if proc.returncode != 0:
        print(f"FAILED (exit {proc.returncode}); see {log}")
        return {"name": name, **spec, "returncode": proc.returncode}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(
        name=name,
        **spec,
        returncode=0,
        median_s=statistics.median(res["times_s"]),
        cpu_per_wall_median=statistics.median(res["cpu_per_wall"]),
    )
    runs = ", ".join(f"{t:.2f}" for t in res["times_s"])
    print(
        f"{res['tokens']} tokens, median {res['median_s']:.2f} s (runs {runs}; "
        f"CPU/wall {res['cpu_per_wall_median']:.2f}), peak RSS {res['peak_rss_gb']:.2f} GB"
    )
    return res


def convert(ckpt: Path, workdir: Path, mmprojs: set[tuple[str, str]]) -> None:
    """Write the GGUF files that are missing, with our CLI from this checkout."""
    jobs = [("convert", "f16", workdir / "lm-f16.gguf", [])]
    jobs += [("mmproj", t, workdir / f"mmproj-{m}-{t}.gguf", ["--mode", m]) for m, t in sorted(mmprojs)]
    pythonpath = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}  # ours runs from this checkout, as in bench_convert.py
    for command, outtype, out, extra in jobs:
        if out.is_file():
            continue
        print(f"converting {out.name}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "minicpmv_gguf.cli",
                command,
                str(ckpt),
                "-o",
                str(out),
                "--outtype",
                outtype,
                *extra,
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )


def report(rows: list[dict], meta: dict) -> str:
    ref = next((r.get("median_s") for r in rows if r["name"] == REFERENCE), None)
    lm_rss = next((r["rss_after_lm_load_gb"] for r in rows if r.get("rss_after_lm_load_gb")), None)
    lines = [
        f"# Vision encode benchmark ({SIDE}×{SIDE} image)",
        "",
        f"- checkpoint: `{meta['checkpoint']}`; {meta['machine']}, {meta['cpus']} CPUs, {meta['threads']} threads",
        f"- load average (1/5/15 min): {meta['load_avg_before']} before, {meta['load_avg_after']} after; "
        f"{meta['date']}; total {meta['total_s']} s",
        f"- llama-cpp-python {meta['llama_cpp_python']} (flash attention `{meta['flash_attn']}`), "
        f"torch {meta['torch']}, transformers {meta['transformers']}",
        f"- encode time: median of {meta['repeat']} runs after one warm-up, model load excluded; "
        "each row in its own process (peak RSS = that process: LM mmapped + mmproj/model + compute; "
        f"RSS after loading the F16 LM, before the mmproj: {fmt(lm_rss, '.2f')} GB)",
        f"- CPU/wall: CPU seconds of all threads per wall second while encoding; below {meta['threads']} means "
        "the process waited for a core (other load), so its time is inflated",
        "",
        f"| config | file type | tokens | encode s (median) | CPU/wall | peak RSS GB | × {REFERENCE} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ftype = r["type"].upper() + (" mmproj" if r["engine"] == "mtmd" else " torch")
        lines.append(
            f"| {r['name']} | {ftype} | {r.get('tokens', '—')} | {fmt(r.get('median_s'), '.2f')} | "
            f"{fmt(r.get('cpu_per_wall_median'), '.2f')} | {fmt(r.get('peak_rss_gb'), '.2f')} | "
            f"{ratio(r.get('median_s'), ref)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--workdir", type=Path, default=CACHE / "encode", help="GGUF files and per-row logs")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", choices=list(FLASH_ATTN), default="auto", help="mtmd's flash-attention setting")
    ap.add_argument("--only", help="comma-separated config names, e.g. 'mtmd 16x bf16,transformers 16x bf16'")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where encode.md and encode.json go")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((worker_mtmd if spec["engine"] == "mtmd" else worker_hf)(spec)))
        return 0
    if args.checkpoint is None or not (args.checkpoint / "config.json").is_file():
        ap.error("CHECKPOINT must be a directory with config.json")

    names = [n.strip() for n in args.only.split(",")] if args.only else list(CONFIGS)
    if unknown := set(names) - set(CONFIGS):
        ap.error(f"unknown config(s) {sorted(unknown)}; known: {list(CONFIGS)}")
    ckpt, workdir = args.checkpoint.resolve(), args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]  # before our own work
    if load_before[0] > 0.5:  # other work inflates encode times; the CPU/wall column shows by how much
        print(f"warning: 1-minute load average is {load_before[0]:.2f}; encode times may be inflated")
    convert(ckpt, workdir, {CONFIGS[n][1:] for n in names if CONFIGS[n][0] == "mtmd"})
    rows = []
    for name in names:
        engine, mode, dtype = CONFIGS[name]
        spec = {
            "engine": engine,
            "mode": mode,
            "type": dtype,
            "threads": args.threads,
            "repeat": args.repeat,
            "flash_attn": args.flash_attn,
            "ckpt": str(ckpt),
            "lm": str(workdir / "lm-f16.gguf"),
            "mmproj": str(workdir / f"mmproj-{mode}-{dtype}.gguf") if engine == "mtmd" else None,
        }
        rows.append(run_config(name, spec, workdir / f"{name.replace(' ', '-')}.log"))

    meta = {
        "checkpoint": str(ckpt),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "repeat": args.repeat,
        "flash_attn": args.flash_attn,
        "image": f"{SIDE}x{SIDE} RGB, numpy seed {SEED}",
        "machine": f"{platform.system()} {platform.machine()} ({cpu_model()})",
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "llama_cpp_python": package_version("llama-cpp-python"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "total_s": round(time.perf_counter() - start, 1),
    }
    md = report(rows, meta)
    print("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "encode.md").write_text(md)
    (args.results / "encode.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.results / 'encode.md'} and encode.json")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
