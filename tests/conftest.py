"""Shared fixtures: tiny random MiniCPM-V 4.6 checkpoints (built once per session) and their LM GGUFs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

# The runtime fixtures (tiny_files, bad_files) live beside the cases that use them.
pytest_plugins = ["tests.runtime_cases", "tests.serve_cases"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    # A hidden hub download must fail, not pass on a networked machine.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))


def _build(tmp_path_factory, name: str, **kwargs) -> Path:
    from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp(name) / "ckpt", **kwargs)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """float32, 16/16-style equal key and value heads, one safetensors file."""
    return _build(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt_vheads(tmp_path_factory) -> Path:
    """Linear-attention value heads = 2 x key heads: exercises the value-head reorder."""
    return _build(tmp_path_factory, "tiny-vheads", linear_num_value_heads=4)


@pytest.fixture(scope="session")
def tiny_ckpt_bf16(tmp_path_factory) -> Path:
    """bfloat16 on disk, three shards with an index: the released checkpoint's layout."""
    return _build(tmp_path_factory, "tiny-bf16", dtype="bfloat16", num_shards=3)


@pytest.fixture(scope="session")
def tiny_ckpt_kquant(tmp_path_factory) -> Path:
    """Every LM matrix row a multiple of 256 (k-quant blocks), 8 layers: llama.cpp's quant rules apply as on the
    real model."""
    from tests.fixtures.tiny_checkpoint import KQUANT_TEXT

    return _build(tmp_path_factory, "tiny-kquant", text_overrides=KQUANT_TEXT)


@pytest.fixture(scope="session")
def convert_cached(tmp_path_factory):
    """convert(checkpoint, outtype) -> LM GGUF path, converted once per session."""
    from minicpmv_gguf.convert_hf_to_gguf import convert_lm

    cache: dict[tuple[Path, str], Path] = {}
    out_dir = tmp_path_factory.mktemp("gguf")

    def convert(checkpoint: Path, outtype: str = "f32") -> Path:
        key = (checkpoint, outtype)
        if key not in cache:
            out = out_dir / f"{checkpoint.parent.name}-{outtype}.gguf"
            convert_lm(checkpoint, out, outtype=outtype)
            cache[key] = out
        return cache[key]

    return convert


@pytest.fixture(scope="session")
def convert_mmproj_session(tmp_path_factory):
    """mmproj(checkpoint, mode, outtype) -> mmproj GGUF path, converted once per session."""
    from minicpmv_gguf.mmproj import convert_mmproj

    cache: dict[tuple[Path, str, str], Path] = {}
    out_dir = tmp_path_factory.mktemp("mmproj-session")

    def convert(checkpoint: Path, mode: str = "16x", outtype: str = "f32") -> Path:
        key = (checkpoint, mode, outtype)
        if key not in cache:
            out = out_dir / f"{checkpoint.parent.name}-mmproj-{mode}-{outtype}.gguf"
            convert_mmproj(checkpoint, out, mode=mode, outtype=outtype)
            cache[key] = out
        return cache[key]

    return convert


def tree_digest(path: Path) -> str:
    """A digest of every file under path (names and bytes): proves inputs were not modified."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
