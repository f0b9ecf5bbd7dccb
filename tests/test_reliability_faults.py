"""Issue 7's faults, each through the real CLI in a subprocess: huge declared shapes under a memory limit,
a full disk (a small tmpfs mounted for the test), SIGINT and SIGKILL mid-write, then a second run.

Each case: exit != 0, one `Error:` line naming the file, nothing under a final name, the inputs untouched.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicpmv_gguf.gguf_io import check_gguf_complete, remove_stale_parts
from tests.helpers import assert_refused, copy_tree, edit_json, run_cli, tree_digest

LM = "model.language_model"


# --- Huge declared shapes must not allocate --------------------------------------------------------------

MEMORY_LIMIT = 512 * 2**20  # address space; a normal tiny conversion needs well under half of it


def run_cli_limited(*args: str) -> subprocess.CompletedProcess:
    """run_cli with RLIMIT_AS set in the child: an allocation past the limit fails there."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return run_cli(*args, preexec_fn=limit)


def add_tensor(path: Path, name: str, shape: list[int], *, data_bytes: int | None = None) -> None:
    """Add an F32 tensor at the end of a safetensors file; its data is a sparse hole of `data_bytes`
    (default: what the shape needs, so the header is consistent)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    size = 4 * shape[0] * shape[1] if data_bytes is None else data_bytes
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end + size]}  # replaces one of that name
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        f.truncate(8 + len(raw) + end + size)  # a hole: no disk space, no memory


def stat_digest(path: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes: enough to see a change, without reading 16 GiB of holes."""
    return [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))]


def test_the_memory_limit_bites():
    code = "import numpy as np; np.ones(2**30, np.uint8); print('allocated')"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)),
    )
    assert r.returncode != 0 and "MemoryError" in r.stderr


HUGE = {  # case: (command, tensor, shape, data bytes or None for consistent, message)
    "2^40 x 2^40 declared, 8 bytes stored": (
        "convert",
        f"{LM}.huge",
        [2**40, 2**40],
        8,
        "needs 4835703278458516698824704",
    ),
    "2^40 x 2^40 declared, 8 bytes stored (mmproj)": (
        "mmproj",
        f"{LM}.huge",
        [2**40, 2**40],
        8,
        "needs 4835703278458516698824704",
    ),
    "16 GiB consistent tensor no rule maps": ("convert", f"{LM}.huge", [2**22, 2**10], None, "no rule maps it"),
    "16 GiB consistent vision tensor no rule maps": (
        "mmproj",
        "model.vision_tower.huge",
        [2**22, 2**10],
        None,
        "no rule maps it",
    ),
    "16 GiB embedding, config says 1022 rows": (
        "convert",
        f"{LM}.embed_tokens.weight",
        [2**22, 2**10],
        None,
        "1 tensor problem(s): model.language_model.embed_tokens.weight: "
        "shape (4194304, 1024), config.json implies (1022, 64)",
    ),
    # Consistent with config.json: the tokenizer check stops 2^24 padding tokens (1.5 GB of strings).
    "4 GiB embedding, config vocab_size 2^24": (
        "convert",
        f"{LM}.embed_tokens.weight",
        [2**24, 64],
        None,
        "1022 tokens for an embedding of 16777216 rows",
    ),
}


@pytest.mark.parametrize("case", HUGE)
def test_huge_declared_shapes_fail_without_allocating(tiny_ckpt, tmp_path, case):
    command, name, shape, data_bytes, message = HUGE[case]
    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    st = ckpt / "model.safetensors"
    add_tensor(st, name, shape, data_bytes=data_bytes)
    if shape == [2**24, 64]:
        edit_json(ckpt / "config.json", lambda d: d["text_config"].update(vocab_size=2**24))
    names = st if data_bytes else ckpt / "tokenizer.json" if shape == [2**24, 64] else ckpt
    before = stat_digest(ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_cli_limited(command, ckpt, "-o", out_dir / "x.gguf")
    assert "MemoryError" not in r.stderr
    assert_refused(r, message, names, out_dir)
    assert stat_digest(ckpt) == before


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import minicpmv_gguf.convert_hf_to_gguf as lm
    from minicpmv_gguf.cli import cli

    def plan_lm(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(lm, "plan_lm", plan_lm)
    r = CliRunner().invoke(cli, ["convert", str(tmp_path), "-o", str(tmp_path / "lm.gguf")])
    assert r.exit_code == 1 and r.output.splitlines() == [
        "Error: out of memory (free some, or check the input for huge declared sizes)"
    ]


# --- A full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB file system: a tmpfs, else a loop-mounted ext4 image. Needs root (mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a full disk is simulated by mounting a small file system: needs root and mount(8)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        image = tmp_path / "small.img"
        with open(image, "wb") as f:
            f.truncate(1024 * 1024)
        mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
        r2 = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
        if mkfs.returncode or r2.returncode:
            pytest.skip(
                f"cannot mount a small file system here: tmpfs: {r.stderr.strip()}; "
                f"loop ext4: {(mkfs.stderr or r2.stderr).strip()}"
            )
        shutil.rmtree(mnt / "lost+found", ignore_errors=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture(scope="module")
def kquant_f16(tiny_ckpt_kquant, convert_cached) -> Path:
    return convert_cached(tiny_ckpt_kquant, "f16")


@pytest.mark.parametrize("command", ["convert", "mmproj", "quantize"])
def test_full_disk(tiny_ckpt, kquant_f16, small_fs, command):
    src = kquant_f16 if command == "quantize" else tiny_ckpt
    before = tree_digest(src) if src.is_dir() else tree_digest(src.parent)
    out = small_fs / "out.gguf"
    r = run_cli(command, src, "-o", out)
    line = assert_refused(r, "cannot write: No space left on device", out, small_fs)
    assert line == f"Error: {out}: cannot write: No space left on device"
    assert (tree_digest(src) if src.is_dir() else tree_digest(src.parent)) == before


# --- SIGINT and SIGKILL mid-write, then the same command again ------------------------------------------

# The real CLI, with a pause after each tensor chunk is written so a signal lands mid-write; `marker`
# appears once the first chunk is in the .part file.
_SLOW_CLI = """
import sys, time
from pathlib import Path
import minicpmv_gguf.tensor_plan as tensor_plan
marker = Path(sys.argv.pop(1))
chunks = tensor_plan._chunks

def slow_chunks(p, ggml_type):
    for chunk in chunks(p, ggml_type):
        yield chunk
        marker.touch()
        time.sleep(0.1)

tensor_plan._chunks = slow_chunks
from minicpmv_gguf.cli import cli
cli(prog_name="minicpmv-gguf")
"""


def interrupt(args: list, sig: int, marker: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run the slowed CLI, send `sig` once the first chunk is written; (the result, the child's PID)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, str(marker), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no chunk written in 120 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), proc.pid


@pytest.mark.parametrize("command", ["convert", "mmproj"])
def test_sigint_mid_write_leaves_nothing_and_exits_130(tiny_ckpt, tmp_path, command):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = tree_digest(tiny_ckpt)
    args = [command, tiny_ckpt, "-o", out_dir / "x.gguf"]
    r, _ = interrupt(args, signal.SIGINT, tmp_path / "marker")
    assert r.returncode == 130, r.stderr
    assert r.stderr.splitlines()[-1] == "interrupted; no output was left under its final name", r.stderr
    assert "Traceback" not in r.stderr and list(out_dir.iterdir()) == []
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out_dir.iterdir()] == ["x.gguf"]
    check_gguf_complete(out_dir / "x.gguf")
    assert tree_digest(tiny_ckpt) == before


@pytest.mark.parametrize("command", ["convert", "mmproj"])
def test_sigkill_mid_write_then_the_next_run_cleans_up(tiny_ckpt, tmp_path, command):
    out_dir, clean_dir = tmp_path / "out", tmp_path / "clean"
    out_dir.mkdir()
    clean_dir.mkdir()
    before = tree_digest(tiny_ckpt)
    r, pid = interrupt([command, tiny_ckpt, "-o", out_dir / "x.gguf"], signal.SIGKILL, tmp_path / "marker")
    assert r.returncode == -signal.SIGKILL
    stale = out_dir / f".x.gguf.{pid}.part"
    assert [p.name for p in out_dir.iterdir()] == [stale.name]  # hidden, never the final name
    r = run_cli(command, tiny_ckpt, "-o", out_dir / "x.gguf")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out_dir.iterdir()] == ["x.gguf"]  # the stale .part is gone
    assert run_cli(command, tiny_ckpt, "-o", clean_dir / "x.gguf").returncode == 0
    assert (out_dir / "x.gguf").read_bytes() == (clean_dir / "x.gguf").read_bytes()
    assert tree_digest(tiny_ckpt) == before


def test_only_parts_of_dead_processes_for_the_same_target_are_removed(tmp_path):
    dead = []
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        dead.append(p.pid)
    out = tmp_path / "lm.gguf"
    keep = {
        "live process": tmp_path / f".lm.gguf.{os.getpid()}.part",
        "other target": tmp_path / f".other.gguf.{dead[0]}.part",
        "not a PID": tmp_path / ".lm.gguf.12ab.part",
        "not hidden": tmp_path / f"lm.gguf.{dead[0]}.part",
        "directory": tmp_path / f".lm.gguf.{dead[1]}.part",
        "symlink": tmp_path / f".lm.gguf.{dead[2]}.part",
    }
    stale = tmp_path / f".lm.gguf.{dead[0]}.part"
    for name, path in keep.items():
        if name == "directory":
            path.mkdir()
        elif name == "symlink":
            path.symlink_to(keep["not a PID"])
        else:
            path.write_text("x")
    stale.write_text("x")
    assert remove_stale_parts(out) == [stale]
    assert not stale.exists() and all(p.exists() or p.is_symlink() for p in keep.values())
