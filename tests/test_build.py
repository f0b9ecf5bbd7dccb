"""`build`: checkpoint -> quantized LM, mmproj per mode, Ollama package and manifest; reruns, resumes, refusals.

Skipped stages are proven by inodes and mtimes that do not change, and by the stage reports, not by timing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from minicpmv_gguf import __version__
from minicpmv_gguf.errors import OllamaError, OutputError, QuantizeError, SourceError, ToolkitError
from minicpmv_gguf.pipeline import MANIFEST, StageProgress, build, fingerprint
from minicpmv_gguf.pipeline.progress import eta
from tests.helpers import run_cli, tree_digest


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every output file: a skipped stage leaves its files untouched."""
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, ".minicpmv-gguf.lock")
    }


def statuses(result) -> dict[str, str]:
    return {s.name: s.status for s in result.stages}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tiny_ckpt_kquant, tmp_path_factory):
    """A Q4_K_M build with both mmproj modes, and every progress event it sent."""
    events = []
    out = tmp_path_factory.mktemp("build") / "out"
    return build(tiny_ckpt_kquant, out, modes=("16x", "4x"), threads=2, progress=events.append), events


def test_build_writes_what_the_manifest_lists(built, tiny_ckpt_kquant):
    from minicpmv_gguf.ollama import check_modelfile

    result, _ = built
    out = result.out_dir
    assert result.lm == out / "lm-Q4_K_M.gguf" and set(result.mmprojs) == {"16x", "4x"}
    assert statuses(result) == {
        "check": "ran",
        "convert": "ran",
        "quantize": "ran",
        "mmproj-16x": "ran",
        "mmproj-4x": "ran",
        "ollama": "ran",
    }
    m = json.loads((out / MANIFEST).read_text())
    assert m["tools"] == {
        "minicpmv_gguf": __version__,
        "gguf": metadata.version("gguf"),
        "llama-cpp-python": metadata.version("llama-cpp-python"),
        "libllama": m["tools"]["libllama"],
    }
    assert m["tools"]["libllama"]
    assert m["source"]["kind"] == "local" and m["source"]["path"] == str(tiny_ckpt_kquant.resolve())
    assert m["source"]["fingerprint"] == fingerprint(tiny_ckpt_kquant)[0]
    assert m["options"]["quant"] == "Q4_K_M" and m["options"]["modes"] == ["16x", "4x"]
    # Every file on disk is in the manifest with its true size and sha256; the unquantized LM is gone.
    assert (
        set(m["files"])
        == set(snapshot(out))
        == {
            "lm-Q4_K_M.gguf",
            "mmproj-16x.gguf",
            "mmproj-4x.gguf",
            "ollama/Modelfile",
            "ollama/lm-Q4_K_M.gguf",
            "ollama/mmproj-16x.gguf",
        }
    )
    for name, record in m["files"].items():
        assert record["size"] == (out / name).stat().st_size and record["sha256"] == sha256(out / name), name
    lm, mm = m["files"]["lm-Q4_K_M.gguf"], m["files"]["mmproj-4x.gguf"]
    assert (lm["architecture"], lm["file_type"], mm["architecture"], mm["file_type"]) == (
        "qwen35",
        "Q4_K_M",
        "clip",
        "Q4_0",  # build's mmproj default (spec.BUILD_MMPROJ_TYPE)
    )
    assert {"Q4_K", "Q6_K", "F32"} <= set(lm["tensor_types"])
    # The package links the build's GGUFs (one copy on disk) and passes Ollama's rules.
    for name in ("lm-Q4_K_M.gguf", "mmproj-16x.gguf"):
        assert (out / "ollama" / name).samefile(out / name)
        assert m["files"][f"ollama/{name}"]["link_to"] == name
    assert not [p for p in check_modelfile(out / "ollama" / "Modelfile") if not p.warning]
    assert not list(out.glob(".*.part"))


def test_build_reports_progress_with_time_left(built):
    result, events = built
    for i, name in enumerate([s.name for s in result.stages], start=1):
        kinds = [e.kind for e in events if e.name == name]
        assert kinds[0] == "start" and kinds[-1] == "finish" and all(e.index == i for e in events if e.name == name)
        assert all(0 <= e.done <= e.total for e in events if e.name == name and e.kind == "advance")
    assert any(e.kind == "advance" and e.name == "quantize" for e in events)
    log = io.StringIO()
    render = StageProgress(log, tty=False)
    for e in events:
        render(e)
    lines = log.getvalue().splitlines()
    assert "[3/6] quantize: LM to Q4_K_M with llama.cpp's quantizer" in lines
    assert any(line.startswith("[2/6] convert") and "ETA" in line for line in lines)
    assert lines[-1].startswith("[6/6] ollama: done in ")
    tty = io.StringIO()
    render = StageProgress(tty, tty=True, min_interval=0)
    for e in events:
        render(e)
    assert "\r" in tty.getvalue() and "ETA" in tty.getvalue()
    assert eta(10.0, 0.25) == "0:30" and eta(0.1, 0.5) == "--:--" and eta(7300, 0.5) == "2:01:40"


def test_cli_build_prints_the_commands_and_a_rerun_skips_every_stage(tiny_ckpt_kquant, tmp_path):
    out = tmp_path / "out"
    first = run_cli("build", tiny_ckpt_kquant, "-o", out, "--threads", "2")
    assert first.returncode == 0, first.stderr
    assert "[1/5] check: source" in first.stderr and "[3/5] quantize: done in" in first.stderr
    lm, mm = out / "lm-Q4_K_M.gguf", out / "mmproj-16x.gguf"
    assert f"  run:    minicpmv-gguf run {lm} --mmproj {mm} --image IMAGE -p " in first.stdout
    assert f"  chat:   minicpmv-gguf chat {lm} --mmproj {mm}\n" in first.stdout
    assert f"  ollama: ollama create minicpm-v4.6 -f {out / 'ollama' / 'Modelfile'}" in first.stdout
    before, manifest = snapshot(out), json.loads((out / MANIFEST).read_text())

    again = run_cli("build", tiny_ckpt_kquant, "-o", out)
    assert again.returncode == 0, again.stderr
    assert "0 stage(s) run (none), 4 skipped" in again.stdout
    assert "[2/5] convert: skipped (not needed: lm-Q4_K_M.gguf is up to date)" in again.stderr
    assert "[3/5] quantize: skipped (lm-Q4_K_M.gguf matches the manifest)" in again.stderr
    assert snapshot(out) == before
    after = json.loads((out / MANIFEST).read_text())
    assert {k: v for k, v in after.items() if k != "updated"} == {k: v for k, v in manifest.items() if k != "updated"}


def test_rerun_redoes_only_what_is_missing_changed_or_asked_for(tiny_ckpt_kquant, tmp_path):
    out = tmp_path / "out"
    build(tiny_ckpt_kquant, out, modes=("16x", "4x"), threads=2)
    before = snapshot(out)
    (out / "mmproj-4x.gguf").unlink()
    with open(out / "mmproj-16x.gguf", "r+b") as f:  # same size, one byte changed
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))

    result = build(tiny_ckpt_kquant, out, modes=("16x", "4x"), threads=2)
    assert statuses(result) == {
        "check": "ran",
        "convert": "not needed",
        "quantize": "skipped",
        "mmproj-16x": "ran",
        "mmproj-4x": "ran",
        "ollama": "ran",
    }
    assert snapshot(out)["lm-Q4_K_M.gguf"] == before["lm-Q4_K_M.gguf"]
    assert (out / "ollama" / "mmproj-16x.gguf").samefile(out / "mmproj-16x.gguf")
    m = json.loads((out / MANIFEST).read_text())
    assert all(m["files"][n]["sha256"] == sha256(out / n) for n in m["files"])

    # Another quant type and one mode: the LM is redone, the outputs no longer wanted are removed.
    result = build(tiny_ckpt_kquant, out, quant="Q5_K_M", modes=("16x",), threads=2)
    assert statuses(result) == {
        "check": "ran",
        "convert": "ran",
        "quantize": "ran",
        "mmproj-16x": "skipped",
        "ollama": "ran",
    }
    assert set(result.removed) == {"lm-Q4_K_M.gguf", "mmproj-4x.gguf", "ollama/lm-Q4_K_M.gguf"}
    assert set(snapshot(out)) == {
        "lm-Q5_K_M.gguf",
        "mmproj-16x.gguf",
        "ollama/Modelfile",
        "ollama/lm-Q5_K_M.gguf",
        "ollama/mmproj-16x.gguf",
    }


def test_float_quant_and_kept_unquantized_lm(tiny_ckpt, tmp_path):
    result = build(tiny_ckpt, tmp_path / "f16", quant="F16", ollama=False)
    assert [s.name for s in result.stages] == ["check", "convert", "mmproj-16x"]
    assert result.lm.name == "lm-F16.gguf" and result.ollama is None and "ollama" not in result.commands()
    kept = build(tiny_ckpt, tmp_path / "kept", keep_unquantized=True, threads=2)
    files = json.loads((kept.out_dir / MANIFEST).read_text())["files"]
    assert {"lm-F32.gguf", "lm-Q4_K_M.gguf"} <= set(files)  # tiny_ckpt is float32: F32 before quantizing


def test_interrupted_build_resumes_and_leaves_nothing_under_a_final_name(tiny_ckpt_kquant, tmp_path):
    out = tmp_path / "out"

    def interrupt_quantization(event):
        if event.name == "quantize" and event.kind == "advance":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tiny_ckpt_kquant, out, threads=2, progress=interrupt_quantization)
    time.sleep(0.5)  # the terminated quantizer must not write anything after this
    assert sorted(p.name for p in out.iterdir()) == [".minicpmv-gguf.lock", "lm-F32.gguf", MANIFEST]
    assert "lm-F32.gguf" in json.loads((out / MANIFEST).read_text())["files"]

    # Leftovers of a SIGKILLed run: a temporary GGUF and a half-made package folder.
    (out / ".mmproj-16x.gguf.4000001.part").write_bytes(b"GGUF partial")
    (out / ".ollama.4000002.part").mkdir()
    (out / ".ollama.4000002.part" / "Modelfile").write_text("FROM ./x\n")
    result = build(tiny_ckpt_kquant, out, threads=2)
    assert statuses(result)["convert"] == "skipped" and statuses(result)["quantize"] == "ran"
    assert set(result.removed) == {".mmproj-16x.gguf.4000001.part", ".ollama.4000002.part"}
    assert not [p for p in out.iterdir() if p.name.endswith(".part")] and not (out / "lm-F32.gguf").exists()


def test_foreign_directory_is_refused_without_force(tiny_ckpt_kquant, tiny_ckpt, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(OutputError, match="not a minicpmv-gguf build.*--force"):
        build(tiny_ckpt_kquant, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    build(tiny_ckpt_kquant, mine, force=True, ollama=False, threads=2)
    assert (mine / "notes.txt").read_text() == "my notes"  # --force writes beside what is there

    other = tmp_path / "other"
    build(tiny_ckpt_kquant, other, threads=2)
    digest = tree_digest(other)
    with pytest.raises(OutputError, match="holds a build of a different source"):
        build(tiny_ckpt, other)
    assert tree_digest(other) == digest
    result = build(tiny_ckpt, other, force=True, threads=2)
    assert all(s.status == "ran" for s in result.stages)
    assert json.loads((other / MANIFEST).read_text())["source"]["fingerprint"] == fingerprint(tiny_ckpt)[0]

    again = build(tiny_ckpt, other, force=True, threads=2)  # --force on its own build: every stage again
    assert all(s.status == "ran" for s in again.stages)


def test_bad_options_and_outputs_fail_before_any_work(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    cases = [
        (dict(quant="Q9_X"), QuantizeError, "unknown quantization type"),
        (dict(quant="IQ2_XS"), QuantizeError, "importance matrix"),
        (dict(modes=("8x",)), ToolkitError, "choose 16x, 4x"),
        (dict(mmproj_outtype="q3_k"), ToolkitError, "mmproj outtype"),
        (dict(ollama_name="no spaces"), OllamaError, "Ollama name"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            build(tiny_ckpt, out, **kwargs)
    with pytest.raises(OutputError, match="is the checkpoint directory or inside it"):
        build(tiny_ckpt, tiny_ckpt / "build")
    with pytest.raises(SourceError, match="no such directory, and not a Hugging Face repo id"):
        build(tmp_path / "missing", out)
    assert not out.exists() and not (tiny_ckpt / "build").exists()


def test_manifest_write_failure_keeps_the_old_manifest(built, monkeypatch):
    from minicpmv_gguf.pipeline import manifest as mf

    result, _ = built
    before = (result.out_dir / MANIFEST).read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mf.os, "fsync", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        mf.write_manifest(result.out_dir, json.loads(before))
    assert (result.out_dir / MANIFEST).read_bytes() == before
    assert not list(result.out_dir.glob(".manifest.json.*"))


def test_a_second_build_in_the_same_directory_fails_fast(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from minicpmv_gguf.pipeline import BuildLock; "
            "lock = BuildLock(sys.argv[1]).__enter__(); print('locked', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = run_cli("build", tiny_ckpt, "-o", out)
        assert r.returncode == 1 and time.monotonic() - t0 < 30
        assert r.stderr.strip().splitlines()[-1] == (
            f"Error: {out}: another build or verify (build, pid {holder.pid}) is using this directory; "
            "wait for it to finish or choose another directory"
        )
        assert [p.name for p in out.iterdir()] == [".minicpmv-gguf.lock"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run_cli("build", tiny_ckpt, "-o", out, "--no-ollama").returncode == 0  # free again


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is None, reason="needs huggingface_hub (the hub extra)")
def test_hub_repo_id_offline_fails_fast_and_cleanly(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set and the repo is not in the local Hugging Face cache"):
        build("openbmb/MiniCPM-V-4.6", out)
    # Online mode with an unreachable hub: one line, exit 1, well before any timeout.
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "minicpmv_gguf.cli", "build", "openbmb/MiniCPM-V-4.6", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert r.stderr.strip() == (
        "Error: openbmb/MiniCPM-V-4.6: 127.0.0.1:9 cannot be reached (Connection refused) and "
        "the repo is not in the local Hugging Face cache; download it where the hub is "
        "reachable, or give a local checkpoint directory"
    )
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(SourceError, match="needs huggingface_hub"):
        build("openbmb/MiniCPM-V-4.6", out)


def test_hub_repo_id_builds_from_the_local_cache_offline(tiny_ckpt, tmp_path):
    """A repo in the Hugging Face cache builds without network; the manifest pins its commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--tiny--minicpmv"
    shutil.copytree(tiny_ckpt, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "minicpmv_gguf.cli",
            "build",
            "tiny/minicpmv",
            "-o",
            str(out),
            "--no-ollama",
            "--quant",
            "F16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"from tiny/minicpmv@{commit[:12]}" in r.stdout
    source = json.loads((out / MANIFEST).read_text())["source"]
    assert (source["kind"], source["repo_id"], source["revision"]) == ("hub", "tiny/minicpmv", commit)
    assert source["fingerprint"] == fingerprint(tiny_ckpt)[0]


def test_a_build_folder_stands_for_its_ggufs(built, tmp_path):
    from minicpmv_gguf.errors import ManifestError
    from minicpmv_gguf.pipeline.folder import build_files, gguf_paths

    result, _ = built
    files = build_files(result.out_dir)
    assert files.lm == result.lm and files.mmprojs == {m: p for m, p in result.mmprojs.items()}
    assert gguf_paths(result.out_dir) == (result.lm, tuple(result.mmprojs.values()))
    assert gguf_paths(tmp_path / "lm.gguf", (tmp_path / "m.gguf",)) == (tmp_path / "lm.gguf", (tmp_path / "m.gguf",))
    with pytest.raises(ManifestError, match="brings its own mmproj"):
        gguf_paths(result.out_dir, (tmp_path / "m.gguf",))
    with pytest.raises(ManifestError, match="not a build folder"):
        build_files(tmp_path)
