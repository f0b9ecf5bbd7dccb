"""Issue 7's catalogue of bad inputs, run through the real CLI: shards and index, NaN/Inf weights, configs
(property-based), tokenizers that do not fit, truncated GGUFs.

Each case: exit != 0, one `Error:` line naming the file and the problem, nothing under a final name (no
`.part` either), the inputs untouched. Faults (full disk, signals, memory limit) are in
test_reliability_faults.py; test_cli_convert.py and test_safetensors_io.py hold the cases already covered.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minicpmv_gguf.checkpoint import Checkpoint, parse_text_config
from minicpmv_gguf.errors import CheckpointError, GGUFError
from minicpmv_gguf.gguf_io import check_gguf_complete, write_gguf
from minicpmv_gguf.mmproj.config import parse_vision_config
from minicpmv_gguf.native.ggml import bf16_to_f32
from minicpmv_gguf.safetensors_io import read_header
from minicpmv_gguf.tensor_plan import all_finite
from tests.helpers import assert_refused, copy_tree, edit_json, run_cli, tree_digest

LM = "model.language_model"
INDEX = "model.safetensors.index.json"


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# --- Shards and the index -------------------------------------------------------------------------------


def _shards(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def _move_in_index(ckpt: Path) -> str:
    """Assign the first tensor of shard 1 to shard 2 in the index (the bytes stay in shard 1)."""
    name = next(iter(read_header(_shards(ckpt)[0])))
    edit_json(ckpt / INDEX, lambda d: d["weight_map"].update({name: _shards(ckpt)[1].name}))
    return name


INDEX_CASES = {
    "index names a missing shard": (lambda c: _shards(c)[1].unlink(), "shard named in", 1),
    "shard holds a tensor the index assigns elsewhere": (
        _move_in_index,
        "is in model-00001-of-00003.safetensors, not model-00002-of-00003",
        None,
    ),
    "index names a tensor no shard holds": (
        lambda c: edit_json(c / INDEX, lambda d: d["weight_map"].update({f"{LM}.ghost.weight": _shards(c)[0].name})),
        f"missing {LM}.ghost.weight",
        None,
    ),
    "index names a file outside the checkpoint": (
        lambda c: edit_json(
            c / INDEX, lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "../model.safetensors"})
        ),
        "not a file name in",
        None,
    ),
    "index is not an object": (lambda c: (c / INDEX).write_text("[1, 2]"), "no weight_map", None),
}


@pytest.mark.parametrize("case", INDEX_CASES)
def test_bad_index(tiny_ckpt_bf16, tmp_path, out_dir, case):
    damage, message, shard = INDEX_CASES[case]
    ckpt = copy_tree(tiny_ckpt_bf16, tmp_path / "ckpt")
    names = _shards(ckpt)[shard] if shard is not None else ckpt / INDEX
    damage(ckpt)
    before = tree_digest(ckpt)
    assert_refused(run_cli("convert", ckpt, "-o", out_dir / "lm.gguf"), message, names, out_dir)
    assert tree_digest(ckpt) == before


# --- NaN and Inf weights ---------------------------------------------------------------------------------


def poke(ckpt: Path, name: str, value: float, index: int = 0) -> Path:
    """Overwrite element `index` of tensor `name` in place with `value`, in the tensor's own dtype."""
    for shard in _shards(ckpt):
        ref = read_header(shard).get(name)
        if ref is not None:
            assert index < np.prod(ref.shape), (name, ref.shape)
            v = np.array([value], np.float32)
            raw = (
                v.tobytes()
                if ref.dtype == "F32"
                else v.astype(np.float16).tobytes()
                if ref.dtype == "F16"
                else (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()
            )
            with open(shard, "r+b") as f:
                f.seek(ref.offset + index * len(raw))
                f.write(raw)
            return shard
    raise KeyError(name)


def to_f16(ckpt: Path) -> None:
    """Rewrite a float32 checkpoint as float16 (the third source dtype; the fixtures have F32 and BF16)."""
    from safetensors.numpy import load_file, save_file

    for shard in _shards(ckpt):
        save_file({k: v.astype(np.float16) for k, v in load_file(shard).items()}, shard)


DOWN = f"{LM}.layers.0.mlp.down_proj.weight"
HOLDS = "holds NaN or Inf values"
BEYOND_F16 = "beyond F16's 65504: they would become Inf; use --outtype bf16"
NONFINITE = {  # case: (fixture, f16 rewrite, tensor, value, command, outtype, message)
    "NaN, F32 byte copy": ("tiny_ckpt", False, DOWN, np.nan, "convert", "auto", HOLDS),
    "+Inf, F32 -> F16": ("tiny_ckpt", False, DOWN, np.inf, "convert", "f16", HOLDS),
    "-Inf in a norm (+1 transform)": (
        "tiny_ckpt",
        False,
        f"{LM}.layers.0.input_layernorm.weight",
        -np.inf,
        "convert",
        "f16",
        HOLDS,
    ),
    "NaN, BF16 byte copy": ("tiny_ckpt_bf16", False, f"{LM}.embed_tokens.weight", np.nan, "convert", "auto", HOLDS),
    "-Inf, BF16 -> Q8_0": ("tiny_ckpt_bf16", False, DOWN, -np.inf, "convert", "q8_0", HOLDS),
    "Inf, F16 byte copy": ("tiny_ckpt", True, DOWN, np.inf, "convert", "auto", HOLDS),
    "F32 1e5 -> F16 overflow": ("tiny_ckpt", False, DOWN, 1e5, "convert", "f16", BEYOND_F16),
    "BF16 -7e4 -> F16 overflow": ("tiny_ckpt_bf16", False, DOWN, -7e4, "convert", "f16", BEYOND_F16),
    "A_log 100 -> ssm_a = -exp(100) = -Inf": (
        "tiny_ckpt",
        False,
        f"{LM}.layers.0.linear_attn.A_log",
        100.0,
        "convert",
        "f32",
        "becomes NaN or Inf as blk.0.ssm_a (F32)",
    ),
    "NaN in a vision weight (mmproj)": (
        "tiny_ckpt",
        False,
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        np.nan,
        "mmproj",
        "f16",
        HOLDS,
    ),
}


@pytest.mark.slow  # the checkpoint fixture is looked up by name, so conftest's hook cannot see it
@pytest.mark.parametrize("case", NONFINITE)
def test_nonfinite_weights_are_refused_by_tensor_name(request, tmp_path, out_dir, case):
    fixture, f16, name, value, command, outtype, message = NONFINITE[case]
    ckpt = copy_tree(request.getfixturevalue(fixture), tmp_path / "ckpt")
    if f16:
        to_f16(ckpt)
    shard = poke(ckpt, name, value, index=1)
    before = tree_digest(ckpt)
    r = run_cli(command, ckpt, "-o", out_dir / "out.gguf", "--outtype", outtype)
    line = assert_refused(r, message, shard, out_dir)
    assert repr(name) in line
    assert tree_digest(ckpt) == before


def test_f16_overflow_converts_as_bf16_and_f32(tiny_ckpt, tmp_path, out_dir):
    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    poke(ckpt, DOWN, 1e5)
    for outtype in ("bf16", "f32"):
        r = run_cli("convert", ckpt, "-o", out_dir / f"{outtype}.gguf", "--outtype", outtype)
        assert r.returncode == 0, r.stderr


def test_all_finite_matches_numpy_on_every_16_bit_pattern_and_f32_edges():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for ggml_type, values in ((Q.F16, bits.view(np.float16)), (Q.BF16, bf16_to_f32(bits))):
        finite = np.isfinite(values)
        assert all(all_finite(bits[i : i + 1], ggml_type) == finite[i] for i in range(0, 65536)), ggml_type
        assert not all_finite(bits, ggml_type) and all_finite(bits[finite], ggml_type)
    edges = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan, -np.nan], np.float32
    )
    assert [all_finite(edges[i : i + 1], Q.F32) for i in range(len(edges))] == list(np.isfinite(edges))
    assert all_finite(np.zeros(0, np.float32), Q.F32)
    assert all_finite(np.zeros(8, np.uint8), Q.F32)  # raw bytes, as byte copies pass them


# --- Configs: random deletions and type changes ---------------------------------------------------------


def _paths(node, prefix=()):
    """Every key path of a JSON object, list items included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 3, 2**31, 2**32, 2**64]),
    st.floats(),
    st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just([[1]]),
    st.just(["linear_attention", {}]),
)
_DELETE = object()


def _mutations(config: dict):
    paths = sorted(set(_paths(config)), key=repr)
    return st.lists(st.tuples(st.sampled_from(paths), st.one_of(st.just(_DELETE), _WRONG)), min_size=1, max_size=3)


def _apply(config: dict, mutations) -> dict:
    config = copy.deepcopy(config)
    for path, value in mutations:
        node = config
        for k in path[:-1]:  # an earlier mutation may have removed or replaced a parent: skip then
            ok = isinstance(node, dict) and k in node or isinstance(node, list) and type(k) is int and k < len(node)
            node = node[k] if ok else None
        k = path[-1]
        in_list = isinstance(node, list) and type(k) is int and k < len(node)
        if isinstance(node, dict) and (k in node or value is not _DELETE) or in_list:
            if value is _DELETE:
                del node[k]
            else:
                node[k] = copy.deepcopy(value)  # st.just values are shared between examples
    return config


def _kvs_pack(tmp: Path, kvs) -> None:
    """Write the key/values as a GGUF: every value must fit its GGUF type."""
    write_gguf(tmp / "kv.gguf", "x", kvs, [], overwrite=True)


@pytest.fixture(scope="module")
def base_config(tiny_ckpt) -> dict:
    return json.loads((tiny_ckpt / "config.json").read_text())


@pytest.fixture(scope="module")
def kv_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kv")


def test_text_config_mutations_give_a_config_or_a_checkpoint_error(base_config, tiny_ckpt, kv_dir):
    from minicpmv_gguf.convert_hf_to_gguf.metadata import lm_hparams

    where = tiny_ckpt / "config.json"

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations(base_config))
    def check(mutations):
        try:
            text = parse_text_config(_apply(base_config, mutations), where)
        except CheckpointError as err:
            assert str(where) in str(err)
            return
        _kvs_pack(kv_dir, lm_hparams(text))

    check()


def test_vision_config_mutations_give_a_config_or_a_checkpoint_error(base_config, tiny_ckpt, kv_dir):
    from minicpmv_gguf.mmproj.metadata import clip_kvs

    text = parse_text_config(base_config, tiny_ckpt / "config.json")

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations(base_config))
    def check(mutations):
        try:
            vision = parse_vision_config(Checkpoint(tiny_ckpt, _apply(base_config, mutations), text, {}))
        except CheckpointError as err:
            assert str(tiny_ckpt) in str(err)
            return
        _kvs_pack(kv_dir, clip_kvs(vision, "16x"))

    check()


def test_config_mutations_end_to_end(tiny_ckpt, base_config, tmp_path_factory):
    """Mutated config.json through plan + write of both GGUFs: a file or a CheckpointError, nothing else."""
    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.mmproj import convert_mmproj

    work = tmp_path_factory.mktemp("e2e")
    ckpt = copy_tree(tiny_ckpt, work / "ckpt")
    weights = tree_digest(ckpt / "model.safetensors")

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations(base_config))
    def check(mutations):
        (ckpt / "config.json").write_text(json.dumps(_apply(base_config, mutations)))
        for convert in (convert_lm, convert_mmproj):
            try:
                convert(ckpt, work / "out.gguf", overwrite=True)
            except CheckpointError:
                continue
            check_gguf_complete(work / "out.gguf")

    check()
    assert tree_digest(ckpt / "model.safetensors") == weights
    assert not list(work.glob(".*.part"))


def test_config_problem_through_the_cli(tiny_ckpt, tmp_path, out_dir):
    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    edit_json(ckpt / "config.json", lambda d: d["text_config"].update(max_position_embeddings=2**32))
    before = tree_digest(ckpt)
    assert_refused(
        run_cli("convert", ckpt, "-o", out_dir / "lm.gguf"),
        "too large (2^31 or more): max_position_embeddings",
        ckpt / "config.json",
        out_dir,
    )
    assert tree_digest(ckpt) == before


# --- Tokenizers that do not fit the vocabulary ----------------------------------------------------------


def _tok(edit):
    return lambda c: edit_json(c / "tokenizer.json", edit)


def _vocab_past_embedding(t):
    t["model"]["vocab"]["zzz-extra"] = 5000


def _merge_unknown(t):
    t["model"]["merges"].insert(3, ["Ġunknownpiece", "s"])


def _duplicate_id(t):
    vocab = t["model"]["vocab"]
    vocab["zzz-dup"] = next(iter(vocab.values()))


TOKENIZER_CASES = {
    "model.vocab id past the embedding": (
        _tok(_vocab_past_embedding),
        "tokenizer.json",
        "token id 5000 does not fit the embedding",
    ),
    "merge naming an unknown token": (
        _tok(_merge_unknown),
        "tokenizer.json",
        "'Ġunknownpiece' + 's' names 'Ġunknownpiece', which is not in model.vocab",
    ),
    "merge of three parts": (
        _tok(lambda t: t["model"]["merges"].append("a b c")),
        "tokenizer.json",
        "malformed merge 'a b c'",
    ),
    "non-integer token id": (
        _tok(lambda t: t["model"]["vocab"].update(zzz="7")),
        "tokenizer.json",
        "token -> integer id",
    ),
    "two tokens with one id": (_tok(_duplicate_id), "tokenizer.json", "gives id"),
    "added token without content": (
        _tok(lambda t: t["added_tokens"].append({"id": 1021})),
        "tokenizer.json",
        "malformed added_tokens entry",
    ),
    "eos token not in the vocabulary": (
        lambda c: edit_json(c / "tokenizer_config.json", lambda d: d.update(eos_token="<|not-a-token|>")),
        "tokenizer_config.json",
        "eos_token '<|not-a-token|>' is not in the vocabulary",
    ),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_tokenizer_that_does_not_fit(tiny_ckpt, tmp_path, out_dir, case):
    damage, file, message = TOKENIZER_CASES[case]
    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    damage(ckpt)
    before = tree_digest(ckpt)
    assert_refused(run_cli("convert", ckpt, "-o", out_dir / "lm.gguf"), message, ckpt / file, out_dir)
    assert tree_digest(ckpt) == before


def test_unknown_pad_token_is_a_warning_and_left_out(tiny_ckpt, tmp_path, out_dir):
    from minicpmv_gguf.gguf_io import read_gguf_header

    ckpt = copy_tree(tiny_ckpt, tmp_path / "ckpt")
    edit_json(ckpt / "tokenizer_config.json", lambda d: d.update(pad_token="<|no-pad|>"))
    r = run_cli("convert", ckpt, "-o", out_dir / "lm.gguf")
    assert r.returncode == 0 and "pad_token '<|no-pad|>' is not in the vocabulary; not written" in r.stderr
    assert "tokenizer.ggml.padding_token_id" not in read_gguf_header(out_dir / "lm.gguf").kvs


# --- A GGUF truncated after writing ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_gguf(tiny_ckpt_kquant, convert_cached) -> Path:
    return convert_cached(tiny_ckpt_kquant, "f16")


@pytest.fixture(scope="module")
def mmproj_gguf(tiny_ckpt_kquant, tmp_path_factory) -> Path:
    from minicpmv_gguf.mmproj import convert_mmproj

    return convert_mmproj(tiny_ckpt_kquant, tmp_path_factory.mktemp("mm") / "mmproj.gguf").out


def _cut_points(path: Path) -> dict[str, int]:
    header = check_gguf_complete(path)
    size = path.stat().st_size
    return {
        "in the key/values": 3000,
        "in the tensor infos": header.data_offset - 100,
        "in the tensor data": header.data_offset + (size - header.data_offset) // 2,
        "last byte missing": size - 1,
    }


@pytest.fixture(scope="module")
def truncated(lm_gguf, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("truncated")
    data = lm_gguf.read_bytes()
    files = {}
    for case, n in _cut_points(lm_gguf).items():
        files[case] = out / f"lm-{n}.gguf"
        files[case].write_bytes(data[:n])
    return files


CUTS = ["in the key/values", "in the tensor infos", "in the tensor data", "last byte missing"]


@pytest.mark.parametrize("cut", CUTS)
def test_check_gguf_complete(truncated, lm_gguf, cut):
    check_gguf_complete(lm_gguf)
    message = "truncated GGUF: tensor" if cut in ("in the tensor data", "last byte missing") else "truncated"
    with pytest.raises(GGUFError, match=message) as err:
        check_gguf_complete(truncated[cut])
    assert str(err.value).startswith(f"{truncated[cut]}: ")


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_lm_gguf_through_quantize_eval_and_ollama(truncated, lm_gguf, mmproj_gguf, tmp_path, out_dir, cut):
    bad = shutil.copyfile(truncated[cut], tmp_path / "lm.gguf")
    before = tree_digest(tmp_path / "lm.gguf")
    assert_refused(run_cli("quantize", bad, "-o", out_dir / "q.gguf"), "truncated", bad, out_dir)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    assert_refused(run_cli("eval", bad, "--ref", lm_gguf, "--text", text, "--ctx", "32"), "truncated", bad, out_dir)
    assert_refused(run_cli("eval", lm_gguf, "--ref", bad, "--text", text, "--ctx", "32"), "truncated", bad, out_dir)
    shutil.copyfile(mmproj_gguf, tmp_path / "mmproj.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./lm.gguf\nFROM ./mmproj.gguf\n")
    r = run_cli("ollama", "--check", tmp_path / "Modelfile")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.splitlines() == [
        f"{tmp_path / 'Modelfile'}:1: FROM ./lm.gguf: {bad}: " + check_error(bad).split(f"{bad}: ", 1)[1]
    ], r.stdout
    r = run_cli("ollama", bad, "--mmproj", mmproj_gguf, "-o", out_dir / "pkg")
    assert_refused(r, "truncated", bad, out_dir)
    assert tree_digest(tmp_path / "lm.gguf") == before


def check_error(path: Path) -> str:
    with pytest.raises(GGUFError) as err:
        check_gguf_complete(path)
    return str(err.value)


_LOAD = """
import sys
from pathlib import Path
path = sys.argv[1]
try:
    import llama_cpp
    llama_cpp.Llama(model_path=path, n_gpu_layers=0, verbose=False)
    print("llama_cpp.Llama: loaded")
except ValueError as err:
    print(f"llama_cpp.Llama: ValueError: {err}")
try:
    from minicpmv_gguf.runtime import open_model
except ImportError:
    sys.exit(0)
try:
    open_model(Path(path))
    print("open_model: loaded")
except Exception as err:
    print(f"open_model: {type(err).__name__}: {err}")
"""


@pytest.mark.parametrize("cut", CUTS)
def test_loading_a_truncated_gguf_never_aborts_python(truncated, cut):
    """llama.cpp aborts on some malformed files; a truncated LM must come back as a Python error."""
    r = subprocess.run([sys.executable, "-c", _LOAD, str(truncated[cut])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # -6 would be an abort
    lines = r.stdout.splitlines()
    assert lines[0] == f"llama_cpp.Llama: ValueError: Failed to load model from file: {truncated[cut]}"
    assert all(": loaded" not in line for line in lines)
    if len(lines) > 1:
        assert lines[1].startswith("open_model: ModelLoadError: ") and str(truncated[cut]) in lines[1], lines
