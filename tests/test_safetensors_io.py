"""The safetensors header parser: every corrupt or truncated file is one CheckpointError, nothing else."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicpmv_gguf.errors import CheckpointError
from minicpmv_gguf.safetensors_io import read_header, read_rows, read_tensor, row_chunks


def write_st(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def good(path: Path) -> Path:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    return write_st(path, {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, a.tobytes())


def test_reads_a_valid_file(tmp_path):
    refs = read_header(good(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(read_tensor(refs["a"]), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(read_rows(refs["a"], 1, 2), [[3, 4, 5]])


def test_bf16_and_f16_become_exact_float32(tmp_path):
    vals = np.array([1.5, -2.0, 3.140625], np.float32)  # exactly representable in bf16 and f16
    bf16 = (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    f16 = vals.astype(np.float16).tobytes()
    p = write_st(
        tmp_path / "m.safetensors",
        {
            "b": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
            "h": {"dtype": "F16", "shape": [3], "data_offsets": [6, 12]},
        },
        bf16 + f16,
    )
    refs = read_header(p)
    np.testing.assert_array_equal(read_tensor(refs["b"]), vals)
    np.testing.assert_array_equal(read_tensor(refs["h"]), vals)


def test_row_chunks_cover_every_row_once(tmp_path):
    ref = read_header(good(tmp_path / "m.safetensors"))["a"]
    assert list(row_chunks(ref, chunk_bytes=12)) == [(0, 1), (1, 2)]
    assert list(row_chunks(ref)) == [(0, 2)]


@pytest.mark.parametrize(
    "case, header, data, header_len, message",
    [
        ("empty", None, b"", None, "no header"),
        (
            "header longer than file",
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"",
            10**6,
            "declares 1000000 header bytes",
        ),
        ("bad json", "not json", b"", None, "not valid JSON"),
        (
            "offsets past the end",
            {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            b"\0" * 8,
            None,
            "truncated",
        ),
        (
            "overlap",
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlaps",
        ),
        (
            "size not dtype x shape",
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "needs 12",
        ),
        (
            "unsupported dtype",
            {"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "only F32, F16 and BF16",
        ),
        (
            "unknown dtype",
            {"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unknown dtype",
        ),
        (
            "huge shape",
            {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "needs",
        ),
        (
            "negative dim",
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            "invalid shape",
        ),
        ("not an object", [1, 2], b"", None, "not a JSON object"),
    ],
)
def test_corrupt_headers_fail_with_the_file_name(tmp_path, case, header, data, header_len, message):
    p = tmp_path / "model.safetensors"
    if header is None:
        p.write_bytes(b"\1\2")
    elif isinstance(header, str):
        raw = header.encode()
        p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    else:
        write_st(p, header, data, header_len)
    with pytest.raises(CheckpointError) as err:
        read_header(p)
    assert str(p) in str(err.value) and message in str(err.value), str(err.value)


def test_file_shrunk_after_validation_is_reported(tmp_path):
    p = good(tmp_path / "m.safetensors")
    ref = read_header(p)["a"]
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="truncated while reading"):
        read_tensor(ref)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1))
def test_fuzzed_bytes_never_crash_the_parser(tmp_path_factory, blob, declared):
    p = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    p.write_bytes(struct.pack("<Q", declared) + blob)
    try:
        read_header(p)
    except CheckpointError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "x"]),
                "shape": st.lists(st.integers(min_value=-2, max_value=2**33), max_size=3),
                "data_offsets": st.lists(st.integers(min_value=-5, max_value=64), min_size=0, max_size=3),
            }
        ),
        max_size=4,
    ),
    st.integers(min_value=0, max_value=64),
)
def test_fuzzed_headers_are_accepted_only_when_consistent(tmp_path_factory, header, n_data):
    p = write_st(tmp_path_factory.mktemp("fuzz") / "m.safetensors", header, b"\0" * n_data)
    try:
        refs = read_header(p)
    except CheckpointError:
        return
    for ref in refs.values():  # an accepted file can be read in full
        assert read_tensor(ref).size == int(np.prod(ref.shape))
