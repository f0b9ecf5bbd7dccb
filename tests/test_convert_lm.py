"""The written LM GGUF read back: keys and their GGUF types, tensor shapes and types, values, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import GGUFValueType as T
from safetensors.numpy import load_file

from minicpmv_gguf.convert_hf_to_gguf import convert_lm, plan_lm
from minicpmv_gguf.errors import OutputError
from minicpmv_gguf.gguf_io import read_kv_types, read_metadata
from tests.helpers import tree_digest


def _text_config(ckpt):
    return json.loads((ckpt / "config.json").read_text())["text_config"]


def test_hyperparameter_keys_have_llama_cpp_types_and_config_values(tiny_ckpt, convert_cached):
    path = convert_cached(tiny_ckpt, "f32")
    kv, types = read_metadata(path)[0], read_kv_types(path)
    tc = _text_config(tiny_ckpt)
    u32 = {
        "qwen35.block_count": tc["num_hidden_layers"],  # no MTP block, though config says mtp layers 1
        "qwen35.context_length": tc["max_position_embeddings"],
        "qwen35.embedding_length": tc["hidden_size"],
        "qwen35.feed_forward_length": tc["intermediate_size"],
        "qwen35.attention.head_count": tc["num_attention_heads"],
        "qwen35.attention.head_count_kv": tc["num_key_value_heads"],
        "qwen35.attention.key_length": tc["head_dim"],
        "qwen35.attention.value_length": tc["head_dim"],
        "qwen35.rope.dimension_count": int(tc["head_dim"] * tc["rope_parameters"]["partial_rotary_factor"]),
        "qwen35.ssm.conv_kernel": tc["linear_conv_kernel_dim"],
        "qwen35.ssm.state_size": tc["linear_key_head_dim"],
        "qwen35.ssm.group_count": tc["linear_num_key_heads"],
        "qwen35.ssm.time_step_rank": tc["linear_num_value_heads"],
        "qwen35.ssm.inner_size": tc["linear_value_head_dim"] * tc["linear_num_value_heads"],
        "qwen35.full_attention_interval": 4,
        "general.file_type": 0,
        "general.quantization_version": 2,
    }
    for key, value in u32.items():
        assert types[key] == (T.UINT32,) and kv[key] == value, key
    f32 = {
        "qwen35.attention.layer_norm_rms_epsilon": tc["rms_norm_eps"],
        "qwen35.rope.freq_base": tc["rope_parameters"]["rope_theta"],
    }
    for key, value in f32.items():
        assert types[key] == (T.FLOAT32,) and kv[key] == pytest.approx(value), key
    assert types["qwen35.rope.dimension_sections"] == (T.ARRAY, T.INT32)
    assert kv["qwen35.rope.dimension_sections"] == [11, 11, 10, 0]
    assert types["qwen35.attention.recurrent_layers"] == (T.ARRAY, T.BOOL)
    assert kv["qwen35.attention.recurrent_layers"] == [t == "linear_attention" for t in tc["layer_types"]]
    assert "qwen35.nextn_predict_layers" not in kv
    assert kv["general.architecture"] == "qwen35" and kv["general.type"] == "model"
    assert kv["general.license"] == "apache-2.0" and kv["general.converter"].startswith("minicpmv-gguf ")


def test_tokenizer_keys(tiny_ckpt, convert_cached):
    path = convert_cached(tiny_ckpt, "f32")
    kv, types = read_metadata(path)[0], read_kv_types(path)
    tok = json.loads((tiny_ckpt / "tokenizer.json").read_text())
    tc = json.loads((tiny_ckpt / "tokenizer_config.json").read_text())
    vocab_size = _text_config(tiny_ckpt)["vocab_size"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "qwen35"
    assert len(kv["tokenizer.ggml.tokens"]) == len(kv["tokenizer.ggml.token_type"]) == vocab_size
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert kv["tokenizer.ggml.eos_token_id"] == added[tc["eos_token"]]
    assert kv["tokenizer.ggml.bos_token_id"] == added[tc["bos_token"]]
    assert kv["tokenizer.ggml.padding_token_id"] == added[tc["pad_token"]]
    assert kv["tokenizer.ggml.add_bos_token"] is False and types["tokenizer.ggml.add_bos_token"] == (T.BOOL,)
    for special in ("<|im_start|>", "<image>", "</slice>"):
        assert kv["tokenizer.ggml.tokens"][added[special]] == special
        assert kv["tokenizer.ggml.token_type"][added[special]] == 3  # CONTROL
    assert kv["tokenizer.ggml.token_type"][added["<think>"]] == 4  # USER_DEFINED: always matched
    assert len(kv["tokenizer.ggml.merges"]) == len(tok["model"]["merges"])
    assert kv["tokenizer.chat_template"] == (tiny_ckpt / "chat_template.jinja").read_text()


@pytest.mark.parametrize("outtype, matrix_type", [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_tensor_shapes_and_types(tiny_ckpt, convert_cached, outtype, matrix_type):
    path = convert_cached(tiny_ckpt, outtype)
    plan = plan_lm(tiny_ckpt, outtype=outtype)
    infos = {t.name: t for t in read_metadata(path)[1]}
    assert set(infos) == {r.gguf_name for r in plan.rows}
    for row in plan.rows:
        info = infos[row.gguf_name]
        hf_shape = plan.checkpoint.tensors[row.hf_name].shape
        if ".ssm_conv1d." in row.gguf_name:  # [C, 1, K] -> [C, K]
            hf_shape = (hf_shape[0], hf_shape[2])
        assert info.shape == hf_shape, row
        f32 = len(row.shape) == 1 or ".ssm_conv1d." in row.gguf_name
        assert info.ggml_type == ("F32" if f32 else matrix_type), row


def test_values_are_transformed_as_the_source_says(tiny_ckpt, convert_cached):
    hf = load_file(tiny_ckpt / "model.safetensors")
    gg = {t.name: np.array(t.data) for t in GGUFReader(convert_cached(tiny_ckpt, "f32")).tensors}
    lm = "model.language_model"
    np.testing.assert_array_equal(gg["output_norm.weight"], hf[f"{lm}.norm.weight"] + 1)
    np.testing.assert_array_equal(gg["blk.0.attn_norm.weight"], hf[f"{lm}.layers.0.input_layernorm.weight"] + 1)
    np.testing.assert_array_equal(gg["blk.3.attn_q_norm.weight"], hf[f"{lm}.layers.3.self_attn.q_norm.weight"] + 1)
    np.testing.assert_array_equal(gg["blk.0.ssm_norm.weight"], hf[f"{lm}.layers.0.linear_attn.norm.weight"])  # no +1
    np.testing.assert_allclose(gg["blk.0.ssm_a"], -np.exp(hf[f"{lm}.layers.0.linear_attn.A_log"]), rtol=1e-6)
    np.testing.assert_array_equal(gg["blk.0.ssm_dt.bias"], hf[f"{lm}.layers.0.linear_attn.dt_bias"])
    np.testing.assert_array_equal(gg["blk.0.ssm_conv1d.weight"], hf[f"{lm}.layers.0.linear_attn.conv1d.weight"][:, 0])
    np.testing.assert_array_equal(gg["token_embd.weight"], hf[f"{lm}.embed_tokens.weight"])
    np.testing.assert_array_equal(gg["blk.3.attn_q.weight"], hf[f"{lm}.layers.3.self_attn.q_proj.weight"])


def test_bf16_checkpoint_round_trips_exactly_at_bf16(tiny_ckpt_bf16, convert_cached):
    # auto keeps bf16; matrices are copied byte for byte, so values are the checkpoint's own.
    path = convert_cached(tiny_ckpt_bf16, "auto")
    kv, infos = read_metadata(path)
    assert kv["general.file_type"] == 32  # MOSTLY_BF16
    assert {t.ggml_type for t in infos if len(t.shape) == 2 and "conv1d" not in t.name} == {"BF16"}


def test_converting_does_not_import_torch_or_transformers(tiny_ckpt, tmp_path):
    code = (
        "import sys; from pathlib import Path; from minicpmv_gguf.convert_hf_to_gguf import convert_lm; "
        f"convert_lm(Path({str(tiny_ckpt)!r}), Path({str(tmp_path / 'x.gguf')!r})); "
        "bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_existing_output_needs_overwrite_and_input_is_untouched(tiny_ckpt, tmp_path):
    before = tree_digest(tiny_ckpt)
    out = tmp_path / "lm.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        convert_lm(tiny_ckpt, out)
    assert out.read_bytes() == b"keep me"
    convert_lm(tiny_ckpt, out, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert tree_digest(tiny_ckpt) == before
    assert [p.name for p in tmp_path.iterdir()] == ["lm.gguf"]  # no .part left


def test_failure_mid_write_leaves_no_file(tiny_ckpt, tmp_path):
    out = tmp_path / "lm.gguf"

    def boom(n, name):
        if name.startswith("blk.2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_lm(tiny_ckpt, out, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_q8_0_equals_llama_cpp_quantizer(tiny_ckpt, convert_cached, tmp_path):
    # Our Q8_0 must be exactly what llama.cpp's quantizer makes of our F32 file, tensor by tensor.
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, 2
    theirs = tmp_path / "llama-q8_0.gguf"
    rc = llama_cpp.llama_model_quantize(
        str(convert_cached(tiny_ckpt, "f32")).encode(), str(theirs).encode(), ctypes.byref(params)
    )
    assert rc == 0
    ours = {t.name: t for t in GGUFReader(convert_cached(tiny_ckpt, "q8_0")).tensors}
    ref = {t.name: t for t in GGUFReader(theirs).tensors}
    assert ours.keys() == ref.keys()
    for name, t in ref.items():
        assert ours[name].tensor_type == t.tensor_type, name
        np.testing.assert_array_equal(np.asarray(ours[name].data), np.asarray(t.data), err_msg=name)


def test_sampling_defaults_follow_generation_config(tiny_ckpt, tmp_path):
    import shutil

    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    gen = {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.05}
    (ckpt / "generation_config.json").write_text(json.dumps(gen))
    convert_lm(ckpt, tmp_path / "lm.gguf")
    kv, types = read_metadata(tmp_path / "lm.gguf")[0], read_kv_types(tmp_path / "lm.gguf")
    assert kv["general.sampling.top_k"] == 0 and types["general.sampling.top_k"] == (T.INT32,)
    assert kv["general.sampling.temp"] == pytest.approx(0.7) and kv["general.sampling.penalty_repeat"] == pytest.approx(
        1.05
    )
    # The tiny fixture decodes greedily: no sampling keys then.
    assert not any(
        k.startswith("general.sampling.") for k in read_metadata(convert_lm(tiny_ckpt, tmp_path / "greedy.gguf").out)[0]
    )


def test_fast_header_reader_agrees_with_gguf_py(tiny_ckpt, convert_cached):
    from minicpmv_gguf.gguf_io import read_gguf_header

    for outtype in ("f32", "q8_0"):
        path = convert_cached(tiny_ckpt, outtype)
        kv, tensors = read_metadata(path)
        header = read_gguf_header(path)
        assert header.tensors == tensors
        assert header.kvs == {k: v for k, v in kv.items() if not isinstance(v, list)}
