"""The mmproj GGUF read back (keys, types, tensors per mode) and its bad-input handling."""

from __future__ import annotations

import json
import shutil

import gguf
import pytest
from gguf import GGUFValueType as T

from minicpmv_gguf.errors import CheckpointError, TensorMapError, ToolkitError
from minicpmv_gguf.gguf_io import read_kv_types, read_metadata
from minicpmv_gguf.mmproj import convert_mmproj, mode_paths, plan_mmproj
from tests.helpers import run_cli, tree_digest


@pytest.fixture(scope="module")
def mmprojs(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmproj")
    return {
        (m, t): convert_mmproj(tiny_ckpt, out / f"mmproj-{m}-{t}.gguf", mode=m, outtype=t).out
        for m in ("16x", "4x")
        for t in ("f32", "f16", "bf16", "q8_0")
    }


@pytest.mark.parametrize("mode, scale_factor", [("16x", 4), ("4x", 2)])
def test_clip_keys_have_the_types_clip_cpp_asserts(tiny_ckpt, mmprojs, mode, scale_factor):
    path = mmprojs[(mode, "f32")]
    kv, types = read_metadata(path)[0], read_kv_types(path)
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    vc, pre = cfg["vision_config"], json.loads((tiny_ckpt / "preprocessor_config.json").read_text())
    K = gguf.Keys.ClipVision
    u32 = {
        K.PROJECTION_DIM: cfg["text_config"]["hidden_size"],
        K.IMAGE_SIZE: pre["scale_resolution"],
        K.PATCH_SIZE: vc["patch_size"],
        K.EMBEDDING_LENGTH: vc["hidden_size"],
        K.FEED_FORWARD_LENGTH: vc["intermediate_size"],
        K.BLOCK_COUNT: vc["num_hidden_layers"],
        K.Attention.HEAD_COUNT: vc["num_attention_heads"],
        K.Projector.SCALE_FACTOR: scale_factor,
    }
    for key, value in u32.items():
        assert types[key] == (T.UINT32,) and kv[key] == value, key
    assert types[K.Attention.LAYERNORM_EPS] == (T.FLOAT32,)
    assert kv[K.Attention.LAYERNORM_EPS] == pytest.approx(vc["layer_norm_eps"])
    for key, value in ((K.IMAGE_MEAN, pre["image_mean"]), (K.IMAGE_STD, pre["image_std"])):
        assert types[key] == (T.ARRAY, T.FLOAT32) and kv[key] == pytest.approx(value)
    assert types[K.WA_LAYER_INDEXES] == (T.ARRAY, T.INT32) and kv[K.WA_LAYER_INDEXES] == [cfg["insert_layer_id"]]
    assert kv[gguf.Keys.Clip.PROJECTOR_TYPE] == "minicpmv4_6"
    assert kv[gguf.Keys.Clip.HAS_VISION_ENCODER] is True and kv[gguf.Keys.ClipVision.USE_GELU] is True
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"


@pytest.mark.parametrize("mode", ["16x", "4x"])
@pytest.mark.parametrize("outtype, matrix_type", [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_tensor_shapes_and_types(tiny_ckpt, mmprojs, mode, outtype, matrix_type):
    infos = {t.name: t for t in read_metadata(mmprojs[(mode, outtype)])[1]}
    plan = plan_mmproj(tiny_ckpt, mode=mode, outtype=outtype)
    assert set(infos) == {r.gguf_name for r in plan.rows}
    assert any(n.startswith("v.vit_merger.") for n in infos) == (mode == "16x")  # 4x leaves the merger out
    for row in plan.rows:
        info = infos[row.gguf_name]
        assert info.shape == plan.checkpoint.tensors[row.hf_name].shape, row  # no transforms
        if len(info.shape) == 1 or row.gguf_name == "v.position_embd.weight":
            expected = "F32"
        elif row.gguf_name == "v.patch_embd.weight":  # ggml's conv2d kernel: F16 or F32
            expected = "F16" if outtype == "f16" else "F32"
        else:
            expected = matrix_type
        assert info.ggml_type == expected, row
    assert infos["v.position_embd.weight"].shape[0] == 70 * 70


def test_mode_paths_name_each_mode():
    from pathlib import Path

    assert mode_paths(Path("d/mm.gguf"), ["16x"]) == {"16x": Path("d/mm.gguf")}
    assert mode_paths(Path("d/mm.gguf"), ["16x", "4x"]) == {"16x": Path("d/mm-16x.gguf"), "4x": Path("d/mm-4x.gguf")}


def test_cli_writes_both_modes(tiny_ckpt, tmp_path):
    r = run_cli("mmproj", tiny_ckpt, "-o", tmp_path / "mm.gguf", "--mode", "both")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm-16x.gguf", "mm-4x.gguf"]
    assert {
        read_metadata(tmp_path / f"mm-{m}.gguf")[0]["clip.vision.projector.scale_factor"] for m in ("16x", "4x")
    } == {4, 2}


def _edit_config(ckpt, edit):
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _drop_vision(ckpt):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("model.vision_tower.")}, ckpt / "model.safetensors")


BAD = {
    "no vision weights": (_drop_vision, CheckpointError, "no vision weights"),
    "merger layer outside the encoder": (
        lambda c: _edit_config(c, lambda d: d.update(insert_layer_id=7)),
        CheckpointError,
        "insert_layer_id 7 is not an encoder layer",
    ),
    "position table not 70x70": (
        lambda c: _edit_config(c, lambda d: d["vision_config"].update(image_size=560)),
        CheckpointError,
        "is not a 70x70 position table",
    ),
    "two merger rounds": (
        lambda c: _edit_config(c, lambda d: d.update(merger_times=2)),
        CheckpointError,
        "merger_times 2; libmtmd hardcodes 1",
    ),
    "vision width disagrees with weights": (
        lambda c: _edit_config(c, lambda d: d["vision_config"].update(intermediate_size=96)),
        TensorMapError,
        "config.json implies",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoints_are_refused_by_name(tiny_ckpt, tmp_path, case):
    damage, error, message = BAD[case]
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    damage(ckpt)
    before = tree_digest(ckpt)
    with pytest.raises(error, match=message):
        convert_mmproj(ckpt, tmp_path / "mm.gguf")
    assert not (tmp_path / "mm.gguf").exists() and tree_digest(ckpt) == before


def test_unsupported_mode():
    with pytest.raises(ToolkitError, match="mode '8x'"):
        plan_mmproj("unused", mode="8x")


def test_cli_bad_input_is_one_line(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    _edit_config(ckpt, lambda d: d.update(insert_layer_id=-1))
    r = run_cli("mmproj", ckpt, "-o", tmp_path / "mm.gguf", "--mode", "both")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "insert_layer_id -1" in errors[0], r.stderr
    assert not list(tmp_path.glob("mm*"))
