"""Every tensor of the LM and mmproj GGUFs checked before llama.cpp or libmtmd opens them, and the fuzzer.

Torch-free: the example checkpoint in `examples/` is converted here. The files the issue found crashing
the process (an mmproj weight renamed, one transposed) are refused with one line naming the tensor.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from gguf import GGMLQuantizationType as Q

from benchmarks import fuzz_gguf
from minicpmv_gguf.errors import ModelLoadError
from minicpmv_gguf.gguf_io import TensorInfo
from minicpmv_gguf.native import failure_reason
from minicpmv_gguf.tensor_check import MATMUL_TYPES, Expected, tensor_problems

EXAMPLE = Path(__file__).parent.parent / "examples/tiny-minicpmv46"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.mmproj import convert_mmproj

    d = tmp_path_factory.mktemp("checks")
    convert_lm(EXAMPLE, d / "lm.gguf", outtype="f32")
    convert_mmproj(EXAMPLE, d / "mm16.gguf", mode="16x", outtype="f32")
    convert_mmproj(EXAMPLE, d / "mm4.gguf", mode="4x", outtype="f16")
    convert_mmproj(EXAMPLE, d / "mm16q.gguf", mode="16x", outtype="q8_0")
    return SimpleNamespace(dir=d, lm=d / "lm.gguf", mm16=d / "mm16.gguf", mm4=d / "mm4.gguf", mm16q=d / "mm16q.gguf")


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of a GGUF whose tensor infos `edit(list of [name, ggml dims, type, offset])` changed."""
    layout = fuzz_gguf.parse(src.read_bytes())
    edit(layout.tensors)
    dst.write_bytes(layout.to_bytes())
    return dst


def tensor(tensors: list, name: str) -> list:
    return next(t for t in tensors if t[0] == name)


def test_fresh_files_have_no_problems(files):
    from minicpmv_gguf.runtime.headers import gguf_problems

    for path in (files.lm, files.mm16, files.mm4, files.mm16q):
        assert gguf_problems(path) == [], path


def test_renamed_mmproj_weight_is_refused_by_name(files):
    """The issue's segfault: libmtmd loads attention weights as optional and multiplies a NULL tensor."""
    from minicpmv_gguf.runtime import open_model

    bad = edited(
        files.mm16,
        files.dir / "renamed.gguf",
        lambda ts: tensor(ts, "v.blk.1.attn_q.weight").__setitem__(0, "v.blk.1.attn_qq.weight"),
    )
    with pytest.raises(ModelLoadError) as err:
        open_model(files.lm, [bad])
    message = str(err.value)
    assert message.startswith(f"{bad}: 2 problem(s) for libmtmd's minicpmv4_6 graph: ")
    assert "v.blk.1.attn_qq.weight: unknown tensor" in message
    assert "v.blk.1.attn_q.weight: missing" in message
    assert "\n" not in message


def test_transposed_mmproj_weight_is_refused_by_shape(files):
    """The issue's GGML_ASSERT(ggml_can_mul_mat(a, b)) abort."""
    from minicpmv_gguf.runtime.headers import read_mmproj_header

    def swap(ts):
        t = tensor(ts, "v.blk.2.ffn_up.weight")
        t[1] = t[1][::-1]

    bad = edited(files.mm16, files.dir / "transposed.gguf", swap)
    with pytest.raises(ModelLoadError, match=r"v\.blk\.2\.ffn_up\.weight: shape 64x128, expected 128x64$"):
        read_mmproj_header(bad)


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("v.vit_merger.attn_q.weight", "drop", "v.vit_merger.attn_q.weight: missing"),  # 16x needs the merger
        ("v.post_ln.weight", "f16", "v.post_ln.weight: type F16, expected F32"),
        ("v.blk.0.attn_k.weight", "q4_k", "v.blk.0.attn_k.weight: type Q4_K needs rows of a multiple of 256 values"),
        ("mm.up.weight", "twice", "mm.up.weight: stored 2 times"),
    ],
)
def test_each_mmproj_mutation_is_named(files, name, kind, words):
    from minicpmv_gguf.runtime.headers import gguf_problems

    def edit(ts):
        t = tensor(ts, name)
        if kind == "drop":
            ts.remove(t)
        elif kind == "twice":
            ts.append(list(t))
        else:
            t[2] = {"f16": Q.F16, "q4_k": Q.Q4_K}[kind]

    problems = gguf_problems(edited(files.mm16, files.dir / f"{kind}.gguf", edit))
    assert any(p.startswith(words) for p in problems), problems


def test_4x_mmproj_with_merger_tensors_is_refused(files):
    """The modes differ by the merger: a 4x file carrying it is not what libmtmd's 4x graph loads."""
    from minicpmv_gguf.runtime.headers import gguf_problems

    def add(ts):
        ts.append(["v.vit_merger.ln1.weight", [64], int(Q.F32), 0])

    problems = gguf_problems(edited(files.mm4, files.dir / "4x-merger.gguf", add))
    assert problems == ["v.vit_merger.ln1.weight: unknown tensor (libmtmd's minicpmv4_6 graph has none of that name)"]


def test_transposed_lm_tensor_is_ours_and_precise(files):
    from minicpmv_gguf.runtime import open_model

    def swap(ts):
        t = tensor(ts, "blk.0.ffn_up.weight")
        t[1] = t[1][::-1]

    bad = edited(files.lm, files.dir / "lm-transposed.gguf", swap)
    with pytest.raises(ModelLoadError) as err:
        open_model(bad)
    assert str(err.value) == (
        f"{bad}: 1 problem(s) for llama.cpp's qwen35 loader: blk.0.ffn_up.weight: shape 64x128, expected 128x64"
    )


def test_llama_cpp_refusal_names_its_reason(files):
    """Past our checks, llama.cpp's own specific line is the reason, its padding squeezed."""
    from minicpmv_gguf.native import LanguageModel

    def swap(ts):
        t = tensor(ts, "blk.0.ffn_up.weight")
        t[1] = t[1][::-1]

    bad = edited(files.lm, files.dir / "lm-transposed2.gguf", swap)
    with pytest.raises(ModelLoadError, match=r"tensor 'blk\.0\.ffn_up\.weight' has wrong shape; expected 64, 128, got"):
        LanguageModel.from_file(bad)  # the header unchecked: llama.cpp's loader decides


def test_failure_reason_prefers_the_loader_line():
    lines = [
        "llama_model_load: error loading model: check_tensor_dims: tensor 'x' has wrong shape; expected     64,    128",
        "llama_model_load_from_file_impl: failed to load model",
    ]
    assert failure_reason(lines) == "check_tensor_dims: tensor 'x' has wrong shape; expected 64, 128"
    assert failure_reason(lines[1:]) == "failed to load model"


def test_tensor_problems_by_value():
    f32, mat = frozenset({Q.F32}), MATMUL_TYPES
    expected = {"a": Expected((4, 64), mat), "b": Expected((4,), f32), "c": Expected((2,), f32, optional=True)}
    info = lambda name, t, shape: TensorInfo(name, t, shape, 0)  # noqa: E731
    assert tensor_problems([info("a", "Q8_0", (4, 64)), info("b", "F32", (4,))], expected, "X") == []
    assert tensor_problems(
        [info("a", "I32", (4, 64)), info("b", "F32", (5,)), info("z", "F32", (1,)), info("z", "F32", (1,))],
        expected,
        "X",
    ) == [
        "z: stored 2 times",
        "a: type I32, expected a float or block type",
        "b: shape 5, expected 4",
        "z: unknown tensor (X has none of that name)",
    ]
    assert tensor_problems([info("b", "F32", (4,))], expected, "X") == ["a: missing"]
    damaged = tensor_problems([info("b\n", "F32", (4,))], expected, "X")[0]
    assert damaged == "'b\\n': unknown tensor (X has none of that name)"


def test_ollama_check_refuses_a_modelfile_with_a_bad_mmproj(files):
    from minicpmv_gguf.ollama.validate import check_modelfile

    def rename(ts):
        tensor(ts, "v.blk.1.attn_q.weight")[0] = "v.blk.1.attn_x.weight"

    edited(files.mm16, files.dir / "ollama-mm.gguf", rename)
    modelfile = files.dir / "Modelfile"
    modelfile.write_text("FROM lm.gguf\nFROM ollama-mm.gguf\n")
    problems = [p.format(modelfile) for p in check_modelfile(modelfile)]
    assert any("ollama-mm.gguf: v.blk.1.attn_x.weight: unknown tensor" in p for p in problems), problems
    modelfile.write_text("FROM lm.gguf\nFROM mm16.gguf\n")
    assert [p for p in check_modelfile(modelfile) if not p.warning] == []


def test_inspect_lists_problems(files):
    from minicpmv_gguf.gguf_inspect import inspect_gguf

    bad = edited(files.mm16, files.dir / "inspect.gguf", lambda ts: ts.remove(tensor(ts, "mm.down.weight")))
    text = inspect_gguf(bad).text()
    assert "problems (1: the runtime refuses this file)\n  mm.down.weight: missing" in text
    assert "problems" not in inspect_gguf(files.mm16).text()


@pytest.mark.parametrize("kind", ["lm", "mmproj"])
def test_fuzz_nothing_dies_by_a_signal(files, kind, tmp_path):
    """A bounded campaign (200 mutants per kind, about 15 s): every mutant refused with a one-line message
    naming it, or loaded and answered; none killed by a signal, hung or failing with a foreign exception."""
    from PIL import Image

    fuzz_gguf.preload()
    image = tmp_path / "image.png"
    Image.new("RGB", (112, 112), (200, 30, 90)).save(image)
    tally = fuzz_gguf.campaign(kind, {"lm": files.lm, "mmproj": files.mm16}, image, range(200), tmp_path)
    assert tally.failures == [], tally.line(kind)
    assert tally.tried == 200 and tally.refused > 0 and tally.answered > 0
