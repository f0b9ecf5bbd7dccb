"""`compute_imatrix`: the sums of squares llama.cpp sees equal PyTorch's, in llama.cpp's imatrix GGUF format."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from minicpmv_gguf.errors import OutputError, QuantizeError
from minicpmv_gguf.gguf_io import read_kv_types, read_metadata
from minicpmv_gguf.native.lib import ggml_base as _libggml_base
from minicpmv_gguf.quantize import load_imatrix, quantize_lm
from minicpmv_gguf.quantize.imatrix import GGML_OP_MUL_MAT, GgmlTensor, _check_ggml_abi, compute_imatrix
from minicpmv_gguf.verify.reference import N_THREADS, load_llama
from minicpmv_gguf.verify.texts import long_text
from tests.helpers import run_cli

CTX, CHUNKS = 64, 3


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calibration.txt"
    path.write_text(long_text(4000, seed=11), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def f32(tiny_ckpt, convert_cached):
    return convert_cached(tiny_ckpt, "f32")


@pytest.fixture(scope="module")
def imatrix(f32, text, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix") / "tiny.imatrix.gguf"
    return compute_imatrix(f32, text, out, ctx=CTX, max_chunks=CHUNKS, threads=N_THREADS)


def test_ggml_struct_mirror_matches_the_library():
    # Offsets from ggml/include/ggml.h (64-bit): type, buffer, ne[4] @16, nb[4] @48, op @80, op_params[16],
    # flags, src[10] @152, view_src, view_offs, data @248, name[64] @256, extra, padding[8] -> 336 bytes.
    assert ctypes.sizeof(GgmlTensor) == 336 and GGML_OP_MUL_MAT == 29
    assert (GgmlTensor.ne.offset, GgmlTensor.op.offset, GgmlTensor.src.offset) == (16, 80, 152)
    assert (GgmlTensor.data.offset, GgmlTensor.name.offset) == (248, 256)
    _check_ggml_abi()  # ggml_op_name(29) == "MUL_MAT" and ggml_tensor_overhead() == 32 + 336 in libggml


def test_weights_seen_are_the_gguf_matrices(imatrix, f32):
    """Every 2-D blk.* weight of the GGUF, with its shape, read through the struct mirror (name, ne, op, src)."""
    tensors = read_metadata(f32)[1]
    # ssm_conv1d is 2-D but feeds GGML_OP_SSM_CONV, not a MUL_MAT; token_embd is excluded as in llama-imatrix.
    want = {
        t.name: t.shape
        for t in tensors
        if t.name.startswith("blk.") and len(t.shape) == 2 and not t.name.endswith("ssm_conv1d.weight")
    }
    assert imatrix.shapes == want
    assert len(want) == 31


def test_sums_of_squares_match_pytorch(imatrix, tiny_ckpt, f32, text):
    """in_sum2 of every weight against forward pre-hooks on the same nn.Linear inputs, same token ids."""
    import torch

    from minicpmv_gguf.convert_hf_to_gguf import plan_lm
    from minicpmv_gguf.verify.reference import load_reference_model

    ids = load_llama(f32, n_ctx=CTX).tokenize(text.read_text(encoding="utf-8").encode(), add_bos=False)
    chunks = [ids[i * CTX : (i + 1) * CTX] for i in range(CHUNKS)]
    modules = {
        row.gguf_name: row.hf_name.removesuffix(".weight")
        for row in plan_lm(tiny_ckpt).rows
        if row.gguf_name in imatrix.shapes
    }
    model = load_reference_model(tiny_ckpt)
    sums: dict[str, np.ndarray] = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()

        return record

    for gguf_name, hf_module in modules.items():
        model.get_submodule(hf_module).register_forward_pre_hook(hook(gguf_name))
    with torch.no_grad():
        for chunk in chunks:
            model(input_ids=torch.tensor([chunk]))
    assert set(sums) == set(imatrix.shapes)

    reader = GGUFReader(imatrix.out)
    data = {t.name: np.asarray(t.data, dtype=np.float64).ravel() for t in reader.tensors}
    worst = {}
    for name, want in sums.items():
        assert data[f"{name}.counts"].tolist() == [CHUNKS * CTX], name
        worst[name] = float(np.max(np.abs(data[f"{name}.in_sum2"] - want) / want))
    print({k: f"{v:.1e}" for k, v in sorted(worst.items())})
    # Measured worst relative error per element: 1.3e-5 in blk.0-2 (linear attention only, float32; the
    # chunked delta rule sums in another order), 4.2e-4 in blk.3 (attn_output's input): llama.cpp keeps
    # K and V at F16 by default (unit roundoff 4.9e-4; squaring doubles a relative error). With F32 K/V
    # and no flash attention blk.3 drops to 6.8e-6, so the bounds are a few times what float32 and F16 give.
    for name, err in worst.items():
        assert err < (1e-4 if name.startswith(("blk.0.", "blk.1.", "blk.2.")) else 2e-3), (name, err)


def test_file_is_llama_cpp_imatrix_gguf(imatrix, text):
    kv, tensors = read_metadata(imatrix.out)
    assert kv["general.type"] == "imatrix" and kv["imatrix.datasets"] == [str(text)]
    assert (kv["imatrix.chunk_count"], kv["imatrix.chunk_size"]) == (CHUNKS, CTX)
    types = read_kv_types(imatrix.out)
    assert types["imatrix.chunk_count"] == types["imatrix.chunk_size"] == (GGUFValueType.UINT32,)
    assert types["imatrix.datasets"] == (GGUFValueType.ARRAY, GGUFValueType.STRING)
    # tools/imatrix: in_sum2 is ggml [n_cols, n_mat] and counts [1, n_mat], F32, sorted by name.
    by_name = {t.name: t for t in tensors}
    assert list(by_name) == [f"{w}.{part}" for w in sorted(imatrix.shapes) for part in ("in_sum2", "counts")]
    for name, shape in imatrix.shapes.items():
        assert by_name[f"{name}.in_sum2"].shape == (1, shape[1]) and by_name[f"{name}.in_sum2"].ggml_type == "F32"
        assert by_name[f"{name}.counts"].shape == (1, 1) and by_name[f"{name}.counts"].ggml_type == "F32"
    loaded = load_imatrix(imatrix.out)
    assert set(loaded) == set(imatrix.shapes)
    assert all(v.shape == (imatrix.shapes[k][1],) and np.all(v > 0) for k, v in loaded.items())


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]  # gguf.h: struct gguf_init_params


def test_ggml_gguf_reader_reads_it_as_common_imatrix_load_does(imatrix, text):
    """The checks of llama.cpp's common/imatrix-loader.cpp, through ggml's own GGUF reader in libggml-base."""
    lib = _libggml_base()
    for fn, res, args in [
        ("gguf_init_from_file", ctypes.c_void_p, [ctypes.c_char_p, _GGUFInitParams]),
        ("gguf_free", None, [ctypes.c_void_p]),
        ("gguf_get_n_tensors", ctypes.c_int64, [ctypes.c_void_p]),
        ("gguf_get_tensor_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_tensor_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_find_key", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        ("gguf_get_kv_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_arr_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_arr_str", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t]),
        ("gguf_get_val_u32", ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int64]),
    ]:
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    g = lib.gguf_init_from_file(str(imatrix.out).encode(), _GGUFInitParams(True, None))
    assert g
    try:
        datasets, count, size = (
            lib.gguf_find_key(g, k.encode()) for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
        )
        assert min(datasets, count, size) >= 0
        # GGUF_TYPE_ARRAY = 9 of GGUF_TYPE_STRING = 8; GGUF_TYPE_UINT32 = 4 (gguf_get_val_u32 asserts it).
        assert (lib.gguf_get_kv_type(g, datasets), lib.gguf_get_arr_type(g, datasets)) == (9, 8)
        assert lib.gguf_get_arr_str(g, datasets, 0) == str(text).encode()
        assert lib.gguf_get_kv_type(g, count) == lib.gguf_get_kv_type(g, size) == 4
        assert (lib.gguf_get_val_u32(g, count), lib.gguf_get_val_u32(g, size)) == (CHUNKS, CTX)
        names = [lib.gguf_get_tensor_name(g, i).decode() for i in range(lib.gguf_get_n_tensors(g))]
        assert {lib.gguf_get_tensor_type(g, i) for i in range(len(names))} == {0}  # GGML_TYPE_F32
    finally:
        lib.gguf_free(g)
    sums = {n.removesuffix(".in_sum2") for n in names if n.endswith(".in_sum2")}
    counts = {n.removesuffix(".counts") for n in names if n.endswith(".counts")}
    assert sums == counts == set(imatrix.shapes)


def test_imatrix_feeds_the_quantizer(tiny_ckpt_kquant, convert_cached, text, tmp_path):
    """IQ2_XXS needs an imatrix; with ours it runs, and the imatrix changes what IQ4_XS writes."""
    src = convert_cached(tiny_ckpt_kquant, "f16")
    im = compute_imatrix(src, text, tmp_path / "kq.imatrix", ctx=CTX, max_chunks=2, threads=N_THREADS).out
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix"):
        quantize_lm(src, tmp_path / "x.gguf", qtype="IQ2_XXS")
    result = quantize_lm(src, tmp_path / "iq2.gguf", qtype="IQ2_XXS", imatrix=im, threads=N_THREADS)
    types = {t.name: t.ggml_type for t in read_metadata(result.out)[1]}
    assert {types[n] for n in types if n.endswith("ffn_up.weight")} == {"IQ2_XXS"}
    assert result.bits_per_weight < 3
    plain = quantize_lm(src, tmp_path / "a.gguf", qtype="IQ4_XS", threads=N_THREADS)
    guided = quantize_lm(src, tmp_path / "b.gguf", qtype="IQ4_XS", imatrix=im, threads=N_THREADS)
    a, b = ({t.name: bytes(t.data) for t in GGUFReader(r.out).tensors} for r in (plain, guided))
    assert a["blk.1.ffn_up.weight"] != b["blk.1.ffn_up.weight"]


def test_imatrix_on_the_64_wide_checkpoint(imatrix, f32, tmp_path):
    """Rows of 64 cannot hold 256-wide IQ2 blocks: llama.cpp falls back (IQ4_NL, Q4_0); only the 256-column
    blk.3.attn_output stays IQ2_XXS, and that one needs the imatrix."""
    result = quantize_lm(f32, tmp_path / "iq2.gguf", qtype="IQ2_XXS", imatrix=imatrix.out, threads=N_THREADS)
    types = {t.name: t.ggml_type for t in read_metadata(result.out)[1]}
    assert [n for n, t in types.items() if t == "IQ2_XXS"] == ["blk.3.attn_output.weight"]
    assert types["blk.0.ffn_up.weight"] == "IQ4_NL"


def test_refusals(f32, text, imatrix, tmp_path):
    with pytest.raises(OutputError, match="already exists"):
        compute_imatrix(f32, text, imatrix.out)
    with pytest.raises(QuantizeError, match="fewer than one chunk"):
        compute_imatrix(f32, text, tmp_path / "x.gguf", ctx=100_000)
    with pytest.raises(QuantizeError, match="cannot read the text"):
        compute_imatrix(f32, tmp_path / "missing.txt", tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_imatrix(f32, text, tmp_path):
    out = tmp_path / "cli.imatrix.gguf"
    r = run_cli("imatrix", f32, "--text", text, "-o", out, "--ctx", CTX, "--chunks", 2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: importance matrix of 31 weights from 2 chunks of {CTX} tokens")
    assert "imatrix: chunk 2/2" in r.stderr
    assert len(load_imatrix(out)) == 31
