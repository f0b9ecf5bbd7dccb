#!/usr/bin/env python3
"""Time llama.cpp's converter and ours on the same checkpoint, side by side.

    python benchmarks/bench_convert.py CHECKPOINT [--outtype f16] [--workdir DIR] [--mmproj]
                                      [--only baseline|ours] [--keep-outputs]

Rows (one function each, see ROWS):
  * baseline LM:  llama.cpp's convert_hf_to_gguf.py CHECKPOINT --outtype f16 --no-mtp
  * ours LM:      minicpmv-gguf convert CHECKPOINT -o OUT --outtype f16 --force
  * with --mmproj, also: convert_hf_to_gguf.py --mmproj, and minicpmv-gguf mmproj.

Every tool runs once, in its own process, under `/usr/bin/time -v`; we report its wall time,
"Maximum resident set size" and output size, then ours/baseline ratios. Before the first tool runs,
the checkpoint files are read once so that every tool starts with a warm page cache (a cold first
read would otherwise penalise whichever tool runs first).

The baseline is llama.cpp's converter from the llama-cpp-python sdist (BASELINE_VERSION). It is
fetched with `pip download` and its converter files are extracted into benchmarks/.cache/ on first
use. It runs unmodified through baseline_shim.py, which only supplies tokenizer.ggml.pre when the
converter does not recognise the tokenizer hash (the case for the synthetic tokenizer of
make_full_size_checkpoint.py; see that file).

Results go to benchmarks/results/convert.md and convert.json. Converter logs stay in the workdir;
GGUF outputs are deleted after measuring unless --keep-outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
BASELINE_VERSION = "0.3.36"  # llama-cpp-python sdist that bundles the converter
# Only the converter needs extracting; the sdist also holds the whole C++ tree.
BASELINE_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


@dataclass
class Run:
    row: str  # e.g. "LM", "mmproj"
    tool: str  # "baseline" or "ours"
    cmd: list[str]
    returncode: int
    wall_s: float | None
    peak_rss_gb: float | None
    out_bytes: int | None
    out: str
    log: str


def fetch_baseline(cache: Path = CACHE, version: str = BASELINE_VERSION) -> Path:
    """Return a directory holding llama.cpp's convert_hf_to_gguf.py, downloading it if needed."""
    dest = cache / f"llama.cpp-{version}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    dl = cache / "sdist"
    sdist = dl / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        print(f"fetching llama-cpp-python=={version} sdist (~75 MB) into {dl}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(dl),
            ],
            check=True,
        )
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = cache / f".extract-{version}"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted extraction
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
            if rel and any(rel == f or (f.endswith("/") and rel.startswith(f)) for f in BASELINE_FILES):
                m.name = rel
                members.append(m)
        # The "data" filter refuses links and absolute paths; older Pythons lack it.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members=members, **safe)
    tmp.rename(dest)  # only a complete extraction becomes visible
    return dest


def timed(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float | None, float | None]:
    """Run cmd under /usr/bin/time -v; return (returncode, wall seconds, peak RSS in GB)."""
    stats = log.with_suffix(".time")
    with open(log, "w") as f:
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", str(stats), *cmd], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    text = stats.read_text() if stats.exists() else ""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    seconds = None
    if wall:
        seconds = 0.0
        for part in wall.group(1).split(":"):  # h:mm:ss.ss or m:ss.ss
            seconds = seconds * 60 + float(part)
    return proc.returncode, seconds, (int(rss.group(1)) * 1024 / 1e9 if rss else None)


def measure(ctx: dict, row: str, tool: str) -> Run:
    out = ctx["workdir"] / f"{tool}-{row.lower()}-{ctx['outtype']}.gguf"
    out.unlink(missing_ok=True)  # neither tool may report a stale file as its output
    cmd = ROWS[row][tool == "ours"](ctx, out)
    log = ctx["workdir"] / f"{tool}-{row}.log"
    print(f"[{tool} {row}] {' '.join(cmd)}")
    rc, wall, rss = timed(cmd, log, ctx["env"][tool])
    size = out.stat().st_size if rc == 0 and out.is_file() else None
    run = Run(row, tool, cmd, rc, wall, rss, size, str(out), str(log))
    status = "ok" if rc == 0 else f"FAILED (exit {rc}); see {log}"
    print(f"[{tool} {row}] {status}: wall {fmt(wall, '.1f')} s, peak RSS {fmt(rss, '.2f')} GB")
    if rc != 0:
        print("  " + "\n  ".join(log.read_text(errors="replace").splitlines()[-5:]))
    return run


def baseline_cmd(ctx: dict, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(HERE / "baseline_shim.py"),
        str(ctx["llama_dir"]),
        str(ctx["ckpt"]),
        "--outfile",
        str(out),
        "--outtype",
        ctx["outtype"],
        *extra,
    ]


def ours_cmd(ctx: dict, command: str, out: Path) -> list[str]:
    # `-m minicpmv_gguf.cli` works without the console script on PATH (e.g. an uninstalled checkout).
    return [
        sys.executable,
        "-m",
        "minicpmv_gguf.cli",
        command,
        str(ctx["ckpt"]),
        "-o",
        str(out),
        "--outtype",
        ctx["outtype"],
        "--force",
    ]


def baseline_lm(ctx: dict, out: Path) -> list[str]:
    # --no-mtp: the config says mtp_num_hidden_layers 1 but the checkpoint has no mtp.* tensors.
    return baseline_cmd(ctx, out, "--no-mtp")


def ours_lm(ctx: dict, out: Path) -> list[str]:
    return ours_cmd(ctx, "convert", out)


def baseline_mmproj(ctx: dict, out: Path) -> list[str]:
    return baseline_cmd(ctx, out, "--mmproj")


def ours_mmproj(ctx: dict, out: Path) -> list[str]:
    return ours_cmd(ctx, "mmproj", out)


# row -> (baseline command, our command); a new row is one entry and two small functions.
ROWS = {"LM": (baseline_lm, ours_lm), "mmproj": (baseline_mmproj, ours_mmproj)}


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def report(runs: list[Run], meta: dict) -> str:
    lines = [
        f"# Conversion benchmark ({meta['outtype']})",
        "",
        f"- checkpoint: `{meta['checkpoint']}` ({meta['checkpoint_gb']:.2f} GB of safetensors)",
        f"- machine: {meta['machine']}, {meta['cpus']} CPUs, 1-min load average {meta['load_avg_before']} "
        f"before the runs; Python {meta['python']}, torch {meta['torch']}; {meta['date']}",
        f"- baseline: llama.cpp `convert_hf_to_gguf.py` from llama-cpp-python {BASELINE_VERSION}",
        "- each tool ran once, baseline first, in its own process under `/usr/bin/time -v`;",
        "  the checkpoint was read once beforehand, so the file cache was warm for every tool",
        "",
        "| row | tool | wall s | peak RSS GB | output GB | exit |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        out_gb = None if r.out_bytes is None else r.out_bytes / 1e9
        lines.append(
            f"| {r.row} | {r.tool} | {fmt(r.wall_s, '.1f')} | {fmt(r.peak_rss_gb, '.2f')} | "
            f"{fmt(out_gb, '.3f')} | {r.returncode} |"
        )
    by = {(r.row, r.tool): r for r in runs}
    pairs = [row for row in ROWS if (row, "baseline") in by and (row, "ours") in by]
    if pairs:
        lines += [
            "",
            "Ratios, ours / baseline (below 1 is better for time and memory):",
            "",
            "| row | wall | peak RSS | output size |",
            "|---|---:|---:|---:|",
        ]
        for row in pairs:
            b, o = by[row, "baseline"], by[row, "ours"]
            if b.returncode or o.returncode:  # a failed run's numbers are not comparable
                lines.append(f"| {row} | — | — | — |")
                continue
            lines.append(
                f"| {row} | {ratio(o.wall_s, b.wall_s)} | {ratio(o.peak_rss_gb, b.peak_rss_gb)} | "
                f"{ratio(o.out_bytes, b.out_bytes)} |"
            )
    return "\n".join(lines) + "\n"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def warm_cache(ckpt: Path) -> float:
    """Read every checkpoint file once; returns GB read."""
    total = 0
    for p in sorted(ckpt.iterdir()):
        if p.is_file():
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16"])
    ap.add_argument("--workdir", type=Path, default=CACHE / "work", help="GGUF outputs and logs")
    ap.add_argument("--mmproj", action="store_true", help="also benchmark the mmproj conversion")
    ap.add_argument("--only", choices=["baseline", "ours"], help="run one tool (e.g. before our CLI exists)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the GGUF files in the workdir")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where convert.md and convert.json go")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up while tools run

    ckpt, workdir = args.checkpoint.resolve(), args.workdir.resolve()
    if not (ckpt / "config.json").is_file():
        ap.error(f"{ckpt} has no config.json")
    workdir.mkdir(parents=True, exist_ok=True)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # a hidden download must fail, not time
    # Ours runs from this checkout even when the package is not installed.
    pythonpath = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {"baseline": {**os.environ, **offline}, "ours": {**os.environ, **offline, "PYTHONPATH": pythonpath}}
    ctx = {
        "ckpt": ckpt,
        "workdir": workdir,
        "outtype": args.outtype,
        "env": env,
        "llama_dir": fetch_baseline() if args.only != "ours" else None,
    }

    load = os.getloadavg()[0]  # before our own warm-up read
    print(f"warming the page cache: read {warm_cache(ckpt):.2f} GB from {ckpt}")
    if load > 0.5:  # other work on the machine inflates wall times (not peak RSS)
        print(f"warning: 1-minute load average is {load:.2f} before the runs; wall times may be inflated")
    runs: list[Run] = []
    for row in ["LM", "mmproj"] if args.mmproj else ["LM"]:
        for tool in ("baseline", "ours"):  # baseline first
            if args.only in (None, tool):
                runs.append(run := measure(ctx, row, tool))
                if not args.keep_outputs:
                    Path(run.out).unlink(missing_ok=True)

    meta = {
        "checkpoint": str(ckpt),
        "outtype": args.outtype,
        "cpus": os.cpu_count(),
        "checkpoint_gb": sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9,
        "machine": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "load_avg_before": round(load, 2),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "baseline_version": BASELINE_VERSION,
    }
    md = report(runs, meta)
    print("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "convert.md").write_text(md)
    result = {"meta": meta, "runs": [asdict(r) for r in runs]}
    (args.results / "convert.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results / 'convert.md'} and convert.json")
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
