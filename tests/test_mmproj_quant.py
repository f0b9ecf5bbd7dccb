"""Block-quantized mmproj files: the zero-padded MLP width is exact, every type loads and encodes in
libmtmd within its measured bounds, and type/tensor combinations ggml cannot run are refused first.

The padding checkpoint has an MLP width of 100 (SigLIP2's 4304 is not a multiple of 32 either), so
32-block types pad it to 128 (the window merger's 400 to 416) and k-quants to 256 (512).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from minicpmv_gguf.errors import ToolkitError
from minicpmv_gguf.gguf_io import read_metadata
from minicpmv_gguf.metrics import cosine_rows, nmse
from minicpmv_gguf.mmproj import plan_mmproj, write_mmproj
from minicpmv_gguf.mmproj.convert import mlp_widths
from minicpmv_gguf.mmproj.tensor_map import pad_cols, pad_rows, padded_width
from minicpmv_gguf.verify.bounds import MMPROJ
from tests.helpers import run_cli

MODES = ["16x", "4x"]
NEW_TYPES = ["q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl", "q6_k", "q5_k", "q4_k"]
SIZES = [(112, 112), (224, 336)]  # one chunk; an overview and six slices


# ---- pure functions, by value


def test_padded_width():
    assert [padded_width(n, 32) for n in (1, 32, 33, 100, 4304)] == [32, 32, 64, 128, 4320]
    assert padded_width(4304, 256) == 4352 and padded_width(4304, 1) == 4304


def test_mlp_widths_pad_only_when_the_block_needs_it():
    assert mlp_widths(4304, 1) == (4304, 17216)  # float types: as they are
    assert mlp_widths(4304, 32) == (4320, 17280)  # the merger stays 4 x the encoder's (what the header implies)
    assert mlp_widths(4304, 256) == (4352, 17408)
    assert mlp_widths(128, 32) == (128, 512)


def test_pad_rows_and_cols_append_zeros():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert pad_rows(w, 4).tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 0], [0, 0, 0]]
    assert pad_cols(w, 5).tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]
    assert pad_rows(np.ones(2, np.float32), 3).tolist() == [1, 1, 0]
    assert pad_cols(w, 3) is w and pad_rows(w, 2) is w


# ---- checkpoints and files


@pytest.fixture(scope="module")
def ckpt100(tmp_path_factory):
    from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("mlp100") / "ckpt", vision_overrides={"intermediate_size": 100}
    )


@pytest.fixture(scope="module")
def mmproj(ckpt100, tmp_path_factory):
    """(mode, outtype, pad_mlp_to) -> mmproj path of the width-100 checkpoint, each written once."""
    cache, out = {}, tmp_path_factory.mktemp("mmproj-quant")

    def get(mode: str, outtype: str, pad: int | None = None):
        if (mode, outtype, pad) not in cache:
            path = out / f"mm-{mode}-{outtype}-{pad}.gguf"
            write_mmproj(plan_mmproj(ckpt100, mode=mode, outtype=outtype, pad_mlp_to=pad), path)
            cache[mode, outtype, pad] = path
        return cache[mode, outtype, pad]

    return get


@pytest.fixture(scope="module")
def llm(convert_cached, tiny_ckpt):
    """The F32 LM of the tiny checkpoint: the same tokenizer and width as the width-100 one."""
    from minicpmv_gguf.verify.reference import load_llama

    return load_llama(convert_cached(tiny_ckpt, "f32"), n_ctx=512, logits_all=False)


@pytest.fixture(scope="module")
def embed(llm):
    from minicpmv_gguf.verify.reference import make_image
    from minicpmv_gguf.verify.vision import mtmd_image_embeddings

    def run(path, size):
        return mtmd_image_embeddings(llm, path, make_image(*size, seed=size[0] + size[1]))

    return run


def worst(got, ref) -> tuple[float, float]:
    assert [len(g) for g in got] == [len(r) for r in ref]
    return min(float(cosine_rows(g, r).min()) for g, r in zip(got, ref)), max(nmse(g, r) for g, r in zip(got, ref))


# ---- padding is exact


@pytest.mark.parametrize("mode", MODES)
def test_padded_shapes_and_key(mmproj, mode):
    kv, infos = read_metadata(mmproj(mode, "f32", 32))
    t = {i.name: i for i in infos}
    assert kv["clip.vision.feed_forward_length"] == 128  # the key says the tensors' width
    assert t["v.blk.0.ffn_up.weight"].shape == (128, 64) and t["v.blk.0.ffn_up.bias"].shape == (128,)
    assert t["v.blk.0.ffn_down.weight"].shape == (64, 128) and t["v.blk.0.ffn_down.bias"].shape == (64,)
    if mode == "16x":
        assert t["v.vit_merger.ds_ffn_up.weight"].shape == (512, 256)  # 4 x the padded width
        assert t["v.vit_merger.ds_ffn_down.weight"].shape == (64, 512)
    assert read_metadata(mmproj(mode, "f32"))[0]["clip.vision.feed_forward_length"] == 100  # no type, no pad


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_padding_changes_no_embedding(mmproj, embed, mode, size):
    """Padded F32 against unpadded F32 in libmtmd, both modes.

    Not bit-equal: ggml's kernels take other paths for a 100-wide row (a SIMD tail) than for a 128-wide
    one. Measured worst NMSE 5.6e-8, cosine 0.99999996: 200x inside the F32-vs-transformers bound (1e-5),
    and the padded file is as close to transformers as the unpadded one (next test).
    """
    cos, err = worst(embed(mmproj(mode, "f32", 32), size), embed(mmproj(mode, "f32"), size))
    print(f"{mode} {size}: padded vs unpadded cos {cos:.9f}, NMSE {err:.3g}")
    assert cos >= 0.9999995 and err <= 1e-6, (cos, err)


@pytest.mark.parametrize("mode", MODES)
def test_padded_f32_matches_transformers(mmproj, embed, ckpt100, mode):
    from minicpmv_gguf.verify.reference import load_processor, load_reference_model, make_image
    from minicpmv_gguf.verify.vision import hf_image_embeddings

    model, processor = load_reference_model(ckpt100), load_processor(ckpt100, pil=True)
    for size in SIZES:
        ref = hf_image_embeddings(model, processor, make_image(*size, seed=size[0] + size[1]), mode)
        cos, err = worst(embed(mmproj(mode, "f32", 32), size), ref)
        cos0, err0 = worst(embed(mmproj(mode, "f32"), size), ref)
        print(f"{mode} {size}: vs transformers, padded cos {cos:.7f} NMSE {err:.3g}; unpadded {cos0:.7f} {err0:.3g}")
        assert cos >= MMPROJ["F32"][0] and err <= MMPROJ["F32"][1], (cos, err)


# ---- every type loads and encodes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("outtype", NEW_TYPES)
def test_block_types_encode_within_bounds(mmproj, embed, mode, outtype):
    name = Q[outtype.upper()].name
    min_cos, max_nmse = MMPROJ[name]
    results = [worst(embed(mmproj(mode, outtype), s), embed(mmproj(mode, "f32"), s)) for s in SIZES]
    cos, err = min(r[0] for r in results), max(r[1] for r in results)
    print(f"{mode} {outtype}: vs F32 cos {cos:.6f}, NMSE {err:.3g}")
    assert cos >= min_cos and err <= max_nmse, (cos, err)
    types = {i.name: i.ggml_type for i in read_metadata(mmproj(mode, outtype))[1]}
    assert types["v.blk.0.ffn_down.weight"] == name  # padded, so quantized like every other matrix
    assert types["mm.up.weight"] == types["mm.down.weight"] == name
    assert types["v.position_embd.weight"] == types["v.blk.0.ln1.weight"] == types["mm.up.bias"] == "F32"


# ---- refusals, before anything is written


@pytest.fixture(scope="module")
def ckpt_hidden80(tmp_path_factory):
    """A vision hidden size of 80: attention rows that no 32-block fits and zeros cannot pad."""
    from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("hid80") / "ckpt", vision_overrides={"hidden_size": 80})


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "iq4_nl", "q4_k"])
def test_rows_no_block_fits_are_refused(ckpt_hidden80, tmp_path, outtype):
    with pytest.raises(ToolkitError, match=r"needs rows that are a multiple of 32.*attn_q.weight \(rows of 80\)"):
        plan_mmproj(ckpt_hidden80, outtype=outtype)
    r = run_cli("mmproj", ckpt_hidden80, "-o", tmp_path / "mm.gguf", "--outtype", outtype, "--mode", "both")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "only the MLP width can be zero-padded" in r.stderr
    assert not list(tmp_path.iterdir())
    plan_mmproj(ckpt_hidden80, outtype="f16")  # the float types take any width


def test_unknown_outtype_is_refused(ckpt100):
    with pytest.raises(ToolkitError, match="outtype 'q3_k'"):
        plan_mmproj(ckpt100, outtype="q3_k")


def test_cli_offers_the_new_types(ckpt100, tmp_path):
    r = run_cli("mmproj", ckpt100, "-o", tmp_path / "mm.gguf", "--outtype", "q4_0", "--mode", "both")
    assert r.returncode == 0, r.stderr
    for m in MODES:
        kv, infos = read_metadata(tmp_path / f"mm-{m}.gguf")
        assert {i.name: i for i in infos}["v.blk.0.ffn_down.weight"].ggml_type == "Q4_0"
        assert kv["general.file_type"] == 2  # MOSTLY_Q4_0


def test_ckpt100_copy_is_untouched(ckpt100, tmp_path):
    """Padding happens in the written file only: the checkpoint's MLP stays 100 wide."""
    copy = shutil.copytree(ckpt100, tmp_path / "c")
    plan = plan_mmproj(copy, outtype="q4_0")
    assert plan.ffn_width == 128 and plan.vision.intermediate_size == 100


@pytest.mark.parametrize("mode", MODES)
def test_a_padded_block_type_mmproj_passes_the_crash_checks(mmproj, mode):
    # The checks derive every expected shape from the header; a padded file must satisfy them.
    from minicpmv_gguf.runtime.headers import gguf_problems

    assert gguf_problems(mmproj(mode, "q8_0")) == []
