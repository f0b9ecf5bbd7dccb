"""`minicpmv-gguf convert` as a user runs it: good runs, and bad input -> one line, exit != 0, nothing left."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.helpers import copy_tree, edit_json, run_cli, tree_digest


def test_convert_prints_progress_and_a_summary(tiny_ckpt, tmp_path):
    out = tmp_path / "lm.gguf"
    r = run_cli("convert", tiny_ckpt, "-o", out, "--outtype", "f16")
    assert r.returncode == 0, r.stderr
    assert "writing tensors" in r.stderr
    assert r.stdout.startswith(f"wrote {out}: ") and " tensors, " in r.stdout and " MB, F16, in " in r.stdout
    assert out.read_bytes()[:4] == b"GGUF"


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_ckpt, tmp_path):
    out = tmp_path / "lm.gguf"
    r = run_cli("convert", tiny_ckpt, "-o", out, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "model.language_model.layers.0.linear_attn.A_log -> blk.0.ssm_a  F32 -> F32  [2]" in r.stdout
    assert "nothing written" in r.stdout.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 : 8 + n] = b"{" + b"x" * (n - 1)
    path.write_bytes(bytes(data))


def _rewrite_header(path: Path, edit, extra_data: bytes = b"") -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header, max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"))
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :] + extra_data)


def _offset_past_end(header: dict, end: int) -> None:
    last = max((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][1])
    last["data_offsets"] = [o + 1024 for o in last["data_offsets"]]


def _add_i64_tensor(header: dict, end: int) -> None:
    header["model.language_model.extra"] = {"dtype": "I64", "shape": [1], "data_offsets": [end, end + 8]}


def _token_past_vocab(ckpt: Path) -> None:
    vocab_size = json.loads((ckpt / "config.json").read_text())["text_config"]["vocab_size"]
    edit_json(
        ckpt / "tokenizer.json",
        lambda t: t["added_tokens"].append(
            {
                "id": vocab_size + 3,
                "content": "<extra>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ),
    )


BAD_CHECKPOINTS = {
    "other architecture": (
        lambda c: edit_json(
            c / "config.json", lambda d: d.update(architectures=["LlamaForCausalLM"], model_type="llama")
        ),
        "is not MiniCPMV4_6ForConditionalGeneration",
    ),
    "missing config.json": (lambda c: (c / "config.json").unlink(), "config.json: file not found"),
    "missing tokenizer.json": (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json: file not found"),
    "missing tokenizer_config.json": (
        lambda c: (c / "tokenizer_config.json").unlink(),
        "tokenizer_config.json: file not found",
    ),
    "vocabulary past the embedding": (_token_past_vocab, "does not fit the embedding"),
    "embedding rows != vocab_size": (
        lambda c: edit_json(
            c / "config.json", lambda d: d["text_config"].update(vocab_size=d["text_config"]["vocab_size"] + 8)
        ),
        "embed_tokens.weight: shape",
    ),
    "wrong-typed config field": (
        lambda c: edit_json(c / "config.json", lambda d: d["text_config"].update(hidden_size="64")),
        "text_config.hidden_size: '64' is not int",
    ),
    "truncated safetensors": (lambda c: _truncate(c / "model.safetensors"), "truncated"),
    "corrupt header": (lambda c: _corrupt_header(c / "model.safetensors"), "not valid JSON"),
    "offsets past the end": (
        lambda c: _rewrite_header(c / "model.safetensors", _offset_past_end),
        "model.safetensors: truncated: tensors need",
    ),
    "unsupported dtype": (
        lambda c: _rewrite_header(c / "model.safetensors", _add_i64_tensor, b"\0" * 8),
        "only F32, F16 and BF16",
    ),
    "no chat template": (lambda c: (c / "chat_template.jinja").unlink(), "no chat template"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_one_line_and_leaves_nothing(tiny_ckpt, tmp_path, case):
    damage, message = BAD_CHECKPOINTS[case]
    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    if case == "no chat template":
        edit_json(ckpt / "tokenizer_config.json", lambda d: d.pop("chat_template", None))
    damage(ckpt)
    before = tree_digest(ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_cli("convert", ckpt, "-o", out_dir / "lm.gguf")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and str(ckpt) in error_lines[0], r.stderr
    assert list(out_dir.iterdir()) == []
    assert tree_digest(ckpt) == before


@pytest.mark.parametrize("case", ["exists", "parent missing", "parent is a file", "is a directory"])
def test_bad_output_path(tiny_ckpt, tmp_path, case):
    out = {
        "exists": tmp_path / "lm.gguf",
        "parent missing": tmp_path / "no" / "lm.gguf",
        "parent is a file": tmp_path / "file" / "lm.gguf",
        "is a directory": tmp_path / "dir",
    }[case]
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    if case == "exists":
        out.write_text("old")
    r = run_cli("convert", tiny_ckpt, "-o", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.rglob("*.part"))
    if case == "exists":
        assert out.read_text() == "old"
