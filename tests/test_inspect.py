"""`inspect`: a GGUF's keys, tensor types and sizes from its header, readable, fast on a 248k-entry vocabulary."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from minicpmv_gguf.gguf_inspect import inspect_gguf
from minicpmv_gguf.gguf_io import ArraySummary, read_gguf_header
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def lm(tiny_ckpt, convert_cached):
    return convert_cached(tiny_ckpt, "f16")


def test_cli_inspect_shows_keys_types_and_sizes(lm):
    r = run_cli("inspect", lm)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    reader = GGUFReader(lm)
    n_tensors = len(reader.tensors)
    assert re.fullmatch(
        rf"{re.escape(str(lm))}: GGUF v3, [\d.]+ MB, \d+ key/values, {n_tensors} tensors "
        r"\(data from byte [\d,]+\)",
        lines[0],
    )
    text = r.stdout
    assert re.search(r"^  general\.architecture +str +'qwen35'$", text, re.M)
    assert re.search(r"^  general\.file_type +u32 +1 \(F16\)$", text, re.M)
    assert re.search(r"^  qwen35\.rope\.dimension_sections +\[i32\] +4 items: \[11, 11, 10, 0\]$", text, re.M)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert re.search(
        rf"^  tokenizer\.ggml\.tokens +\[str\] +{n_vocab:,} items: \['!', '\"', '#', '\$', '%', '&', \.\.\.\]$",
        text,
        re.M,
    )
    assert re.search(
        r"^  tokenizer\.chat_template +str +'\{%- if enable_thinking .*\.\.\. \([\d,]+ chars\)$", text, re.M
    )
    # The histogram: one row per type, the counts and bytes add up to the file's tensors.
    types = [t.tensor_type.name for t in reader.tensors]
    table = lines[lines.index("tensors by type") + 2 :]
    rows = {row.split()[0]: int(row.split()[1].replace(",", "")) for row in table}
    assert rows == {**{t: types.count(t) for t in set(types)}, "total": n_tensors}
    assert "bits per weight" in table[-1]
    assert "blk.0.ffn_down.weight" not in text  # the tensor list only on request


def test_cli_inspect_tensors_lists_every_tensor(lm):
    r = run_cli("inspect", lm, "--tensors")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("\ntensors\n")[1].splitlines()
    reader = GGUFReader(lm)
    assert [line.split()[0] for line in listed] == [t.name for t in reader.tensors]
    down = next(line for line in listed if line.split()[0] == "blk.0.ffn_down.weight")
    assert down.split()[1] == "F16" and "[64, 128]" in down  # torch order: [out, in]


def test_array_summaries_match_gguf_py(lm):
    header = read_gguf_header(lm, array_head=3)
    reader = GGUFReader(lm)
    arrays = {k: v for k, v in header.kvs.items() if isinstance(v, ArraySummary)}
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"} <= set(arrays)
    for key, summary in arrays.items():
        full = reader.fields[key].contents()
        assert summary.length == len(full) and list(summary.head) == full[:3], key
    assert "tokenizer.ggml.tokens" not in read_gguf_header(lm).kvs  # arrays stay skipped by default


def test_inspect_reads_a_huge_vocabulary_fast(tmp_path):
    path = tmp_path / "big.gguf"
    writer = GGUFWriter(path, "qwen35")
    writer.add_token_list([f"token-{i}" for i in range(250_000)])
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    t0 = time.perf_counter()
    text = inspect_gguf(path).text(tensors=True)
    assert time.perf_counter() - t0 < 5  # gguf-py's reader takes seconds for this; the header reader skips it
    assert "250,000 items: ['token-0', 'token-1', 'token-2'" in text
    assert re.search(r"^  token_embd\.weight +F32 +\[8, 32\] +1\.0 kB$", text, re.M)


def test_inspect_refuses_a_file_that_is_not_a_gguf(lm, tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(lm.read_bytes()[:200])
    r = run_cli("inspect", bad)
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"Error: {bad}: not a readable GGUF file")
    r = run_cli("inspect", tmp_path / "missing.gguf")
    assert r.returncode == 1 and "not a readable GGUF file" in r.stderr
