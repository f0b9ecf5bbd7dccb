"""`verify`: a build's GGUFs against the PyTorch reference; a good build passes, a tampered one fails (exit 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicpmv_gguf.errors import VerifyError
from minicpmv_gguf.gguf_io import read_gguf_header
from minicpmv_gguf.pipeline import MANIFEST, build, sha256_file
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def good_build(tiny_ckpt_kquant, tmp_path_factory) -> Path:
    """Q4_K_M plus the kept F32 LM, both mmproj modes."""
    out = tmp_path_factory.mktemp("verify") / "build"
    build(tiny_ckpt_kquant, out, modes=("16x", "4x"), keep_unquantized=True, threads=2)
    return out


def table_rows(stdout: str) -> dict[tuple[str, str, str], str]:
    """{(check, file, metric without the count): result} from the printed table."""
    rows = {}
    for line in stdout.splitlines()[2:-1]:
        cells = [c for c in line.split("  ") if c.strip()]
        rows[cells[0].strip(), cells[1].strip(), cells[2].strip().split(" (")[0]] = cells[-1].strip()
    return rows


def test_verify_passes_on_a_good_build_and_records_it(good_build, tiny_ckpt_kquant):
    r = run_cli("verify", good_build, "--checkpoint", tiny_ckpt_kquant)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = table_rows(r.stdout)
    assert set(rows.values()) == {"ok"}
    assert set(rows) == {
        ("files", "7 files", "size + sha256 as recorded"),
        ("source", "ckpt", "content fingerprint"),
        ("tokenizer", "lm-Q4_K_M.gguf", "token ids equal"),
        ("text logits", "lm-F32.gguf", "worst NMSE"),
        ("text logits", "lm-F32.gguf", "top-1 agreement"),
        ("text logits", "lm-Q4_K_M.gguf", "mean KLD"),
        ("text logits", "lm-Q4_K_M.gguf", "top-1 agreement"),
        ("image 16x", "mmproj-16x.gguf", "min token cosine"),
        ("image 16x", "mmproj-16x.gguf", "worst NMSE"),
        ("image 4x", "mmproj-4x.gguf", "min token cosine"),
        ("image 4x", "mmproj-4x.gguf", "worst NMSE"),
    }
    assert r.stdout.splitlines()[-1].startswith(
        f"{good_build} against {tiny_ckpt_kquant.resolve()}: all 11 checks passed"
    )
    recorded = json.loads((good_build / MANIFEST).read_text())["verify"]
    assert recorded["ok"] and len(recorded["rows"]) == 11
    assert recorded["files"]["mmproj-4x.gguf"] == sha256_file(good_build / "mmproj-4x.gguf")
    # A rerun that changes nothing keeps the record; it describes the very same files.
    result = build(tiny_ckpt_kquant, good_build, modes=("16x", "4x"), keep_unquantized=True)
    assert all(s.status != "ran" for s in result.stages[1:])
    assert json.loads((good_build / MANIFEST).read_text())["verify"] == recorded


def _scale_tensor(path: Path, name: str, factor: float) -> None:
    """Multiply one F32 tensor of a GGUF in place."""
    header = read_gguf_header(path)
    t = next(t for t in header.tensors if t.name == name)
    data = np.memmap(path, dtype=np.float32, mode="r+", offset=header.data_offset + t.offset, shape=(t.nbytes // 4,))
    data *= factor
    data.flush()


def _rerecord(build_dir: Path, name: str) -> None:
    """Make the manifest agree with a replaced file, so that only parity can catch it."""
    manifest = json.loads((build_dir / MANIFEST).read_text())
    manifest["files"][name].update(size=(build_dir / name).stat().st_size, sha256=sha256_file(build_dir / name))
    (build_dir / MANIFEST).write_text(json.dumps(manifest))


def test_verify_fails_on_a_tampered_build(good_build, tiny_ckpt_kquant, tmp_path):
    from minicpmv_gguf.mmproj import convert_mmproj
    from tests.fixtures.tiny_checkpoint import KQUANT_TEXT, build_tiny_checkpoint

    tampered = tmp_path / "tampered"
    shutil.copytree(good_build, tampered, ignore=shutil.ignore_patterns(".minicpmv-gguf.lock"))
    # The 16x mmproj of another checkpoint of the same shapes (other seed), and one LM weight scaled.
    other = build_tiny_checkpoint(tmp_path / "other", text_overrides=KQUANT_TEXT, seed=99)
    convert_mmproj(other, tampered / "mmproj-16x.gguf", mode="16x", outtype="f16", overwrite=True)
    _scale_tensor(tampered / "lm-F32.gguf", "blk.0.ffn_down.weight", 1.01)
    for name in ("mmproj-16x.gguf", "lm-F32.gguf"):
        _rerecord(tampered, name)
    for name in ("lm-Q4_K_M.gguf", "mmproj-16x.gguf"):  # copytree copied the package's hard links
        (tampered / "ollama" / name).unlink()
        os.link(tampered / name, tampered / "ollama" / name)

    before = (tampered / MANIFEST).read_text()
    r = run_cli("verify", tampered, "--checkpoint", tiny_ckpt_kquant, "--no-record")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = table_rows(r.stdout)
    failed = {k for k, v in rows.items() if v == "FAIL"}
    assert ("text logits", "lm-F32.gguf", "worst NMSE") in failed
    assert ("image 16x", "mmproj-16x.gguf", "min token cosine") in failed
    assert ("image 16x", "mmproj-16x.gguf", "worst NMSE") in failed
    assert not any(k[0] in ("files", "source", "tokenizer", "image 4x") or k[1] == "lm-Q4_K_M.gguf" for k in failed)
    assert "checks FAILED" in r.stdout.splitlines()[-1]
    assert (tampered / MANIFEST).read_text() == before  # --no-record


def test_verify_needs_a_build_and_the_pytorch_reference(good_build, tmp_path):
    from minicpmv_gguf.verify import verify

    with pytest.raises(VerifyError, match="no manifest.json: not a build directory"):
        verify(tmp_path)
    # Without torch: one line, exit 1 (the import is blocked before the CLI starts).
    code = (
        "import sys; sys.modules['torch'] = None; from minicpmv_gguf.cli import main; "
        "sys.argv = ['minicpmv-gguf', 'verify', sys.argv[1]]; main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(good_build)], capture_output=True, text=True, timeout=120, env={**os.environ}
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "Error: verify compares the GGUFs with the PyTorch reference, which needs torch and "
        "transformers (torch is not installed): pip install torch transformers"
    )
