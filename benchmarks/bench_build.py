#!/usr/bin/env python3
"""`minicpmv-gguf build` against llama.cpp's own converter + quantizer on the same checkpoint, in one run.

    python benchmarks/bench_build.py CHECKPOINT [--quant Q4_K_M] [--workdir DIR] [--results DIR]

Rows, each in its own process under `/usr/bin/time -v`, baseline first:
  * baseline LM:       llama.cpp convert_hf_to_gguf.py --outtype bf16 --no-mtp (bf16: the checkpoint's type,
                       what our build converts to before quantizing)
  * baseline quantize: llama.cpp's quantizer (llama_model_quantize through llama-cpp-python, the
                       library our build calls too) to --quant, 2 threads
  * baseline mmproj:   convert_hf_to_gguf.py --mmproj --outtype f16
  * ours build:        minicpmv-gguf build CHECKPOINT -o DIR --mmproj-outtype f16 (as the baseline; Q4_K_M, Ollama
                       package, manifest with sha256 of every file) into an empty directory
  * ours build again:  the same command on the finished directory (every stage verified and skipped)

Peak memory: `/usr/bin/time` reports the largest single process. Our build runs the quantizer in a
child process while the parent waits, so we also sample the whole process tree's RSS every 50 ms
and report the largest sum ("tree"). The checkpoint is read once beforehand (warm page cache).
Writes benchmarks/results/build.md and build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, HERE, RESULTS, fetch_baseline, fmt, package_version, ratio, timed, warm_cache  # noqa: E402
from bench_encode import cpu_model  # noqa: E402

QUANTIZE = """import sys, llama_cpp
src, out, qtype = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + qtype)
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
sys.exit(1 if rc else 0)
"""


def tree_rss_gb(pid: int) -> float:
    """RSS of a process and all its descendants, summed, in GB (0 when it is gone)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        if "VmRSS:" in status:
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024
    return total / 1e9


def run_row(name: str, cmd: list[str], log: Path, env: dict) -> dict:
    """timed() with a sampler thread that follows the tree under our own process (time -> tool -> children)."""
    base = tree_rss_gb(os.getpid())  # this script itself, not part of the tool's memory
    peak, stop = [0.0], threading.Event()

    def sample() -> None:  # a scan of /proc costs ~1.6 ms: ~3 % of one core at this rate
        while not stop.wait(0.05):
            peak[0] = max(peak[0], tree_rss_gb(os.getpid()) - base)

    shown = ["QUANTIZE" if a == QUANTIZE else a for a in cmd]  # the inline script, by name
    print(f"[{name}] {' '.join(shown)}", flush=True)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc, wall, rss = timed(cmd, log, env)
    stop.set()
    t.join()
    print(
        f"[{name}] exit {rc}: wall {fmt(wall, '.1f')} s, peak RSS {fmt(rss, '.2f')} GB (tree {peak[0]:.2f} GB)",
        flush=True,
    )
    return {
        "name": name,
        "cmd": shown,
        "returncode": rc,
        "wall_s": wall,
        "peak_rss_gb": rss,
        "tree_peak_gb": round(peak[0], 3),
        "log": str(log),
    }


def report(rows: list[dict], stages: dict, meta: dict) -> str:
    by = {r["name"]: r for r in rows}
    base = [r for r in rows if r["name"].startswith("baseline")]
    ok = all(r["returncode"] == 0 for r in base)
    total = {
        "wall_s": sum(r["wall_s"] or 0 for r in base) if ok else None,
        "peak_rss_gb": max((r["peak_rss_gb"] or 0 for r in base), default=None) if ok else None,
        "tree_peak_gb": max((r["tree_peak_gb"] for r in base), default=None) if ok else None,
    }
    lines = [
        f"# Build benchmark: checkpoint -> {meta['quant']} LM + 16x mmproj (+ Ollama package, manifest)",
        "",
        f"- checkpoint `{meta['checkpoint']}` ({meta['checkpoint_gb']:.2f} GB of safetensors, "
        "random weights, full size)",
        f"- {meta['machine']}, {meta['cpus']} CPUs; load average (1/5/15 min) {meta['load_avg_before']} before, "
        f"{meta['load_avg_after']} after; {meta['date']}",
        f"- baseline: llama.cpp `convert_hf_to_gguf.py` (llama-cpp-python {meta['baseline_version']} sdist) and "
        f"llama.cpp's quantizer (libllama of llama-cpp-python {meta['llama_cpp_python']})",
        "- each row once, in its own process under `/usr/bin/time -v`; warm page cache; peak RSS = largest "
        "single process, tree = largest sampled sum over the process and its children",
        "",
        "| row | wall s | peak RSS GB | tree GB | exit |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {fmt(r['wall_s'], '.1f')} | {fmt(r['peak_rss_gb'], '.2f')} | "
            f"{fmt(r['tree_peak_gb'], '.2f')} | {r['returncode']} |"
        )
    lines.append(
        f"| **baseline total** (LM + quantize + mmproj, one after another) | {fmt(total['wall_s'], '.1f')} | "
        f"{fmt(total['peak_rss_gb'], '.2f')} | {fmt(total['tree_peak_gb'], '.2f')} | |"
    )
    ours = by.get("ours build", {})
    if ours.get("returncode") == 0 and ok:
        lines += [
            "",
            f"ours build / baseline total: wall {ratio(ours['wall_s'], total['wall_s'])}, "
            f"peak RSS {ratio(ours['peak_rss_gb'], total['peak_rss_gb'])}, "
            f"tree {ratio(ours['tree_peak_gb'], total['tree_peak_gb'])} (below 1 is better)",
        ]
    if stages:
        lines += [
            "",
            "Our build's stages (seconds, from its progress lines; hashing the outputs included):",
            "",
            "| " + " | ".join(stages) + " |",
            "|" + "---:|" * len(stages),
            "| " + " | ".join(fmt(s, ".1f") for s in stages.values()) + " |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--workdir", type=Path, default=CACHE / "build", help="outputs and logs (emptied first)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ckpt, work = args.checkpoint.resolve(), args.workdir.resolve()
    if not (ckpt / "config.json").is_file():
        ap.error(f"{ckpt} has no config.json")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    llama_dir = fetch_baseline()
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    pythonpath = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **offline, "PYTHONPATH": pythonpath}
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"warming the page cache: read {warm_cache(ckpt):.2f} GB from {ckpt}")
    shim = [sys.executable, str(HERE / "baseline_shim.py"), str(llama_dir), str(ckpt)]
    base_lm, base_q = work / "baseline-lm-bf16.gguf", work / f"baseline-lm-{args.quant}.gguf"
    rows = [
        run_row(
            "baseline LM (convert_hf_to_gguf.py, bf16)",
            [*shim, "--outfile", str(base_lm), "--outtype", "bf16", "--no-mtp"],
            work / "baseline-lm.log",
            env,
        ),
        run_row(
            f"baseline quantize ({args.quant})",
            [sys.executable, "-c", QUANTIZE, str(base_lm), str(base_q), args.quant],
            work / "baseline-quantize.log",
            env,
        ),
        run_row(
            "baseline mmproj (convert_hf_to_gguf.py --mmproj, f16)",
            [*shim, "--mmproj", "--outfile", str(work / "baseline-mmproj-f16.gguf"), "--outtype", "f16"],
            work / "baseline-mmproj.log",
            env,
        ),
    ]
    for p in work.glob("baseline-*.gguf"):
        p.unlink()  # room on disk for ours
    build = [
        sys.executable,
        "-m",
        "minicpmv_gguf.cli",
        "build",
        str(ckpt),
        "-o",
        str(work / "ours"),
        "--quant",
        args.quant,
        "--mmproj-outtype",
        "f16",  # the baseline's type, not build's default
    ]
    rows.append(run_row("ours build", build, work / "ours-build.log", env))
    # "[2/5] convert: done in 4.5 s (...)": the build's own per-stage times (hashing its outputs included)
    stages = {
        m[1]: float(m[2])
        for m in re.finditer(r"^\[\d+/\d+\] (\S+): done in ([\d.]+) s", (work / "ours-build.log").read_text(), re.M)
    }
    rows.append(run_row("ours build again (all stages up to date)", build, work / "ours-build-again.log", env))
    meta = {
        "checkpoint": str(ckpt),
        "quant": args.quant,
        "cpus": os.cpu_count(),
        "checkpoint_gb": sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9,
        "machine": f"{platform.system()} {platform.machine()} ({cpu_model()})",
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "baseline_version": llama_dir.name.rsplit("-", 1)[-1],
        "llama_cpp_python": package_version("llama-cpp-python"),
    }
    md = report(rows, stages, meta)
    print("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "build.md").write_text(md)
    (args.results / "build.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "stages": stages}, indent=2) + "\n"
    )
    print(f"wrote {args.results / 'build.md'} and build.json")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
