"""Shared fixtures: tiny random MiniCPM-V 4.6 checkpoints (built once per session) and their LM GGUFs.

Every test that uses one of the checkpoints is marked `slow`: they are built with torch and transformers.
`pytest -m "not slow"` runs the rest, and fails if torch or transformers got imported all the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The runtime fixtures (tiny_files, bad_files) live beside the cases that use them.
pytest_plugins = ["tests.runtime_cases", "tests.serve_cases"]

TORCH_FIXTURES = {"tiny_ckpt", "tiny_ckpt_vheads", "tiny_ckpt_bf16", "tiny_ckpt_kquant", "ckpt100"}
TORCH_MODULES = ("torch", "transformers")
_no_slow_selected = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    # fixturenames is the whole closure, so a fixture built on a checkpoint counts too.
    for item in items:
        if TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    session.config.stash[_no_slow_selected] = not any(item.get_closest_marker("slow") for item in session.items)


def pytest_sessionfinish(session):
    # The fast subset must run where torch is not installed; an import that slipped in fails the run here.
    loaded = [m for m in TORCH_MODULES if m in sys.modules]
    if session.config.stash.get(_no_slow_selected, False) and loaded:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", f"FAILED: no slow test ran, yet {' and '.join(loaded)} got imported", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
