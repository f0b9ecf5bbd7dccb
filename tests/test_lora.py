"""LoRA: PEFT adapters merged while converting, against PEFT's own merge and transformers with the adapter applied.

Adapters are made with the real `peft` library on the tiny checkpoints (tests/lora_cases.py): language-model
targets (full attention, Gated-DeltaNet linear attention, MLP; value heads = key heads and = 2 x key heads),
vision targets (encoder, window-attention merger, projector); rank 4 and 8; with and without rsLoRA.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from minicpmv_gguf.metrics import cosine_rows, nmse
from minicpmv_gguf.verify.bounds import LM_FLOAT, MMPROJ
from tests.helpers import assert_refused, run_cli
from tests.lora_cases import CASES, VISION_CASES, make_case

MAX_REL = 1e-6  # merged tensors vs the converted PEFT-merged checkpoint: max |diff| / max |ref| per tensor


@pytest.fixture(scope="module")
def lora_case(request, tmp_path_factory):
    """(case id) -> LoraCase, each made once."""
    cache = {}
    specs = {c[0]: c[1:] for c in CASES + VISION_CASES}

    def get(case_id: str):
        if case_id not in cache:
            fixture, kinds, rank, rslora = specs[case_id]
            ckpt = request.getfixturevalue(fixture)
            cache[case_id] = (ckpt, make_case(ckpt, tmp_path_factory.mktemp(case_id), kinds, rank, rslora))
        return cache[case_id]

    return get


def read_tensors(path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


def max_rel(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    assert got.keys() == ref.keys()
    return max(float(np.abs(got[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), 1e-30)) for k in ref)


def gguf_kv(path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(path).get_field(key)
    return None if field is None else field.contents()


@pytest.mark.slow
@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_merged_lm_equals_peft_merge_and_logits_match(lora_case, tmp_path, case_id):
    from transformers import AutoTokenizer

    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.lora import open_adapter
    from minicpmv_gguf.verify.reference import hf_logits, llama_logits, load_llama
    from minicpmv_gguf.verify.texts import chat_prompts

    ckpt, case = lora_case(case_id)
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "peft.gguf"
    convert_lm(ckpt, ours, outtype="f32", loras=[open_adapter(case.adapter)])
    convert_lm(case.merged, theirs, outtype="f32")
    rel = max_rel(read_tensors(ours), read_tensors(theirs))
    assert gguf_kv(ours, "general.lora.count") == 1
    assert gguf_kv(ours, "general.lora.0.targets") == sorted(
        w.removesuffix(".weight") for w in open_adapter(case.adapter).targets
    )

    ids = chat_prompts(AutoTokenizer.from_pretrained(ckpt))[:2]
    llm = load_llama(ours)
    worst = max(nmse(llama_logits(llm, x), hf_logits(case.model, x)) for x in ids)
    with case.model.disable_adapter():  # the adapter must matter, or the comparison proves nothing
        moved = min(nmse(llama_logits(llm, x), hf_logits(case.model, x)) for x in ids)
    print(f"{case_id}: tensors max rel {rel:.3g}; logits vs PeftModel worst NMSE {worst:.3g} (vs base {moved:.3g})")
    assert moved > 1e-3, moved
    assert rel <= MAX_REL, rel
    assert worst <= LM_FLOAT["F32"][0], worst


@pytest.mark.slow
@pytest.mark.parametrize("case_id", [c[0] for c in VISION_CASES])
@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_merged_mmproj_equals_peft_merge_and_embeddings_match(lora_case, convert_cached, tmp_path, case_id, mode):
    from minicpmv_gguf.lora import open_adapter
    from minicpmv_gguf.mmproj import convert_mmproj
    from minicpmv_gguf.verify.reference import load_llama, load_processor, make_image
    from minicpmv_gguf.verify.vision import hf_image_embeddings, mtmd_image_embeddings

    ckpt, case = lora_case(case_id)
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "peft.gguf"
    convert_mmproj(ckpt, ours, mode=mode, outtype="f32", loras=[open_adapter(case.adapter)])
    convert_mmproj(case.merged, theirs, mode=mode, outtype="f32")
    rel = max_rel(read_tensors(ours), read_tensors(theirs))
    assert gguf_kv(ours, "general.lora.count") == 1

    llm = load_llama(convert_cached(ckpt, "f32"), n_ctx=512, logits_all=False)
    image = make_image(224, 224, seed=5)
    got = mtmd_image_embeddings(llm, ours, image)
    processor = load_processor(ckpt, pil=True)
    ref = hf_image_embeddings(case.model, processor, image, mode)
    with case.model.disable_adapter():  # the adapter must matter
        assert min(nmse(g, r) for g, r in zip(got, hf_image_embeddings(case.model, processor, image, mode))) > 1e-3
    assert [len(g) for g in got] == [len(r) for r in ref]
    cos = min(float(cosine_rows(g, r).min()) for g, r in zip(got, ref))
    err = max(nmse(g, r) for g, r in zip(got, ref))
    print(f"{case_id} {mode}: tensors max rel {rel:.3g}; embeddings min cos {cos:.7f}, worst NMSE {err:.3g}")
    min_cos, max_nmse = MMPROJ["F32"]
    assert rel <= MAX_REL, rel
    assert cos >= min_cos and err <= max_nmse, (cos, err)


def _build_args(ckpt, out, *loras):
    args = ["build", ckpt, "-o", out, "--quant", "F32", "--mmproj-outtype", "f32", "--modes", "16x,4x"]
    return args + [x for a in loras for x in ("--lora", a)] + ["--lora-scale", "0.5"]


@pytest.fixture(scope="module")
def lora_build(lora_case, tmp_path_factory):
    """(checkpoint, LM case, vision case, build folder) of an F32 build with an LM and a vision adapter merged."""
    ckpt, case = lora_case("all-lm-r8-rslora")
    _, vcase = lora_case("vision-r4")
    out = tmp_path_factory.mktemp("lora-build") / "build"
    r = run_cli(*_build_args(ckpt, out, case.adapter, vcase.adapter))
    assert r.returncode == 0, r.stderr
    return ckpt, case, vcase, out


@pytest.mark.slow
def test_build_with_lora_records_adapter(lora_build):
    ckpt, case, vcase, out = lora_build
    manifest = json.loads((out / "manifest.json").read_text())
    loras = manifest["options"]["loras"]
    assert [x["path"] for x in loras] == [str(case.adapter.resolve()), str(vcase.adapter.resolve())]
    assert loras[0]["rank"] == 8 and loras[0]["rslora"] and loras[0]["scale"] == 0.5
    assert set(loras[0]["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert gguf_kv(out / "lm-F32.gguf", "general.lora.count") == 1  # only the LM adapter touches the LM
    assert gguf_kv(out / "mmproj-16x.gguf", "general.lora.0.path") == str(vcase.adapter.resolve())
    again = run_cli(*_build_args(ckpt, out, case.adapter, vcase.adapter))
    assert again.returncode == 0 and "4 of 4 stages up to date" in again.stderr, again.stderr


@pytest.mark.slow
def test_verify_applies_the_builds_adapters(lora_build):
    """verify merges the recorded adapters (at the recorded scale) into the PyTorch reference: within F32 bounds."""
    *_, out = lora_build
    r = run_cli("verify", out, "--json", "--no-record")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_build_folder_in_run_chat_and_ollama(lora_build, tmp_path):
    from minicpmv_gguf.verify.reference import make_image

    *_, out = lora_build
    image = tmp_path / "img.png"
    make_image(224, 224).save(image)
    greedy = ["--temperature", "0", "--max-tokens", "3", "--json"]
    normal = run_cli("run", out, "--image", image, "-p", "What is it?", *greedy)
    high = run_cli("run", out, "--image", image, "-p", "What is it?", "--detail", "high", *greedy)
    assert normal.returncode == 0 and high.returncode == 0, normal.stderr + high.stderr
    assert json.loads(normal.stdout)["mode"] == "16x" and json.loads(high.stdout)["mode"] == "4x"
    chat = run_cli("chat", out, "--temperature", "0", "--max-tokens", "3", stdin="Hello\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    mixed = run_cli("run", out, "--mmproj", out / "mmproj-16x.gguf", "-p", "x")
    assert mixed.returncode == 1 and "drop --mmproj" in mixed.stderr
    pkg = run_cli("ollama", out, "-o", tmp_path / "pkg")
    assert pkg.returncode == 0, pkg.stderr
    modelfile = (tmp_path / "pkg" / "Modelfile").read_text()
    assert "FROM ./lm-F32.gguf" in modelfile and "FROM ./mmproj-16x.gguf" in modelfile


@pytest.mark.slow
def test_run_with_adapter_gguf_and_ollama_adapter_line(lora_case, convert_cached, tmp_path):
    """run --lora on the base LM gives the merged LM's greedy tokens; --lora-scale 0 the base LM's."""
    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.lora import open_adapter

    ckpt, case = lora_case("all-lm-r8-rslora")
    adapter, merged = tmp_path / "adapter.gguf", tmp_path / "merged.gguf"
    assert run_cli("lora", case.adapter, "--base", ckpt, "-o", adapter).returncode == 0
    convert_lm(ckpt, merged, outtype="f32", loras=[open_adapter(case.adapter)])
    base = convert_cached(ckpt, "f32")
    greedy = ["-p", "Tell me about the house.", "--temperature", "0", "--max-tokens", "12", "--json"]

    def tokens(*args):
        r = run_cli("run", *args, *greedy)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["token_ids"]

    assert tokens(base, "--lora", adapter) == tokens(merged)
    assert tokens(base, "--lora", adapter, "--lora-scale", "0") == tokens(base)
    mmproj = tmp_path / "mmproj.gguf"
    assert run_cli("mmproj", ckpt, "-o", mmproj).returncode == 0
    r = run_cli("ollama", base, "--mmproj", mmproj, "-o", tmp_path / "pkg", "--lora", adapter)
    assert r.returncode == 0, r.stderr
    assert "ADAPTER ./adapter.gguf" in (tmp_path / "pkg" / "Modelfile").read_text()
    assert run_cli("ollama", "--check", tmp_path / "pkg").returncode == 0


# ---------------------------------------------------------------- pure functions, by value


@pytest.mark.parametrize("suffix", ["in_proj_qkv", "in_proj_z", "in_proj_a", "out_proj", "mlp.up_proj"])
def test_factor_transforms_commute_with_the_base_transform(suffix):
    """T(B·A) = T_B(B)·T_A(A) for every LM tensor a reorder touches (value heads = 2 x key heads)."""
    from minicpmv_gguf.convert_hf_to_gguf.transforms import v_head_reorders
    from minicpmv_gguf.lora.gguf_adapter import FACTOR_REORDER, factor_transforms
    from minicpmv_gguf.tensor_plan import keep

    n_k, n_v, head, k_dim, hidden = 2, 4, 3, 2 * 5, 7
    v = v_head_reorders(n_k, n_v, head, k_dim)
    rows = {"in_proj_qkv": 2 * k_dim + n_v * head, "in_proj_z": n_v * head, "in_proj_a": n_v, "out_proj": hidden}
    cols = {"out_proj": n_v * head}
    name = f"model.language_model.layers.0.{'' if '.' in suffix else 'linear_attn.'}{suffix}.weight"
    key = next((FACTOR_REORDER[s][1] for s in FACTOR_REORDER if name.endswith(s)), None)
    base = v[key] if key else keep
    rng = np.random.default_rng(0)
    b = rng.standard_normal((rows.get(suffix, 5), 3)).astype(np.float32)
    a = rng.standard_normal((3, cols.get(suffix, hidden))).astype(np.float32)
    ta, tb = factor_transforms(name, base, v)
    np.testing.assert_allclose(tb(b) @ ta(a), base(b @ a), rtol=1e-6)


def test_rank_and_alpha_patterns():
    from minicpmv_gguf.lora.adapter import _pattern

    patterns = {"q_proj": 16, r"layers\.3\.mlp\.up_proj": 2}
    assert _pattern(patterns, "model.language_model.layers.3.self_attn.q_proj", 8) == 16
    assert _pattern(patterns, "model.language_model.layers.3.mlp.up_proj", 8) == 2
    assert _pattern(patterns, "model.language_model.layers.1.mlp.up_proj", 8) == 8
    assert _pattern(patterns, "model.language_model.layers.3.self_attn.xq_proj", 8) == 8


# ---------------------------------------------------------------- refusals: one line, nothing written


def _edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


def _rewrite_tensors(adapter, edit):
    from safetensors.numpy import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return path


def _bad_adapters():
    """(id, make(adapter dir) -> the file the message names, message)."""
    return [
        ("dora", lambda a: _edit_config(a, use_dora=True), "DoRA"),
        ("loha", lambda a: _edit_config(a, peft_type="LOHA"), "peft_type 'LOHA' is not supported"),
        ("rank", lambda a: _edit_config(a, r=5).with_name("adapter_model.safetensors"), "says r=5"),
        ("alora", lambda a: _edit_config(a, alora_invocation_tokens=[1, 2]), "aLoRA"),
        ("missing-config", lambda a: (a / "adapter_config.json").unlink() or a / "adapter_config.json", "missing"),
        (
            "missing-weights",
            lambda a: (a / "adapter_model.safetensors").unlink() or a / "adapter_model.safetensors",
            "missing",
        ),
        ("nan", lambda a: _rewrite_tensors(a, _poison), "NaN or Inf"),
        ("unknown-module", lambda a: _rewrite_tensors(a, _rename), "not in"),
        ("shape", lambda a: _rewrite_tensors(a, _widen), "do not fit the base weight"),
        ("not-linear", lambda a: _rewrite_tensors(a, _embedding), "is not a Linear layer"),
    ]


def _first(tensors, kind="lora_A"):
    return next(k for k in sorted(tensors) if kind in k)


def _poison(t):
    t[_first(t)][0, 0] = np.nan


def _rename(t):
    k = _first(t)
    for ab in ("lora_A", "lora_B"):
        old = k.replace("lora_A", ab)
        t[old.replace(f".{ab}.", f"_other.{ab}.")] = t.pop(old)


def _widen(t):
    k = _first(t)
    t[k] = np.concatenate([t[k], t[k]], axis=1)


def _embedding(t):
    k = _first(t)
    a, b = t.pop(k), t.pop(k.replace("lora_A", "lora_B"))
    name = "base_model.model.model.language_model.embed_tokens"
    t[f"{name}.lora_A.weight"], t[f"{name}.lora_B.weight"] = a, b  # the shapes do not matter: refused by kind


@pytest.mark.slow
@pytest.mark.parametrize("command", ["convert", "mmproj", "build"])
@pytest.mark.parametrize("bad_id, make, message", _bad_adapters(), ids=[b[0] for b in _bad_adapters()])
def test_bad_adapter_refused_before_writing(lora_case, tmp_path, command, bad_id, make, message):
    ckpt, case = lora_case("attn-r4")
    adapter = shutil.copytree(case.adapter, tmp_path / "adapter")
    names = make(adapter)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / ("b" if command == "build" else "x.gguf")
    r = run_cli(command, ckpt, "-o", target, "--lora", adapter)
    assert_refused(r, message, names, out_dir)


# ---------------------------------------------------------------- llama.cpp adapter GGUF (`lora`)


def native_logits(lm_path, ids, loras=()) -> np.ndarray:
    """float32 logits [T, vocab] through the toolkit's own llama.cpp layer, adapters applied as `run` does."""
    from minicpmv_gguf.native import Context, LanguageModel

    with LanguageModel.from_file(lm_path) as lm:
        for path, scale in loras:
            lm.add_lora(path, scale)
        with Context(lm, n_ctx=512, n_batch=len(ids), threads=2) as ctx:
            ctx.decode(ids, 0, logits_last=True, logits_all=True)
            return np.array(ctx.logits(0, len(ids)), dtype=np.float32)


# Adapter GGUF (F32 A and B, B·A computed at run time) vs the merged F32 GGUF: the same weights but another
# order of float32 operations (x·W + s·(x·Aᵀ)·Bᵀ vs x·(W + s·B·A)ᵀ). Measured over the 384-token prompt:
# 1.9e-13 (attention), 1.2e-11 (linear attention, value-head reorder), 5.6e-12 (every LM linear, rsLoRA); 8.2e-10
# at most on a 26-token prompt. 1e-8 is ~10x the worst of those: float32 rounding only, 100x tighter than the F32
# parity bound vs transformers (1e-6), and 6 orders below what the adapters change (NMSE vs base >= 0.02). A wrong
# reorder or scale gives NMSE of order 1.
ADAPTER_MAX_NMSE = 1e-8


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["attn-r4", "linear-vheads-r4", "all-lm-r8-rslora"])
def test_adapter_gguf_matches_merged(lora_case, convert_cached, tmp_path, case_id):
    from transformers import AutoTokenizer

    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.lora import open_adapter
    from minicpmv_gguf.verify.texts import chat_prompts

    ckpt, case = lora_case(case_id)
    adapter = tmp_path / "adapter.gguf"
    r = run_cli("lora", case.adapter, "--base", ckpt, "-o", adapter)
    assert r.returncode == 0, r.stderr
    merged = tmp_path / "merged.gguf"
    convert_lm(ckpt, merged, outtype="f32", loras=[open_adapter(case.adapter)])
    base = convert_cached(ckpt, "f32")
    ids = max(chat_prompts(AutoTokenizer.from_pretrained(ckpt)), key=len)[:384]
    got = native_logits(base, ids, [(adapter, 1.0)])
    ref = native_logits(merged, ids)
    err = nmse(got, ref)
    zero = native_logits(base, ids, [(adapter, 0.0)])
    print(f"{case_id}: adapter GGUF vs merged NMSE {err:.3g} over {len(ids)} positions")
    assert err <= ADAPTER_MAX_NMSE, err
    assert np.array_equal(zero, native_logits(base, ids)), "scale 0 must give the base logits exactly"


@pytest.mark.slow
def test_adapter_gguf_refuses_vision_targets(lora_case, tmp_path):
    ckpt, case = lora_case("vision-r4")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_cli("lora", case.adapter, "--base", ckpt, "-o", out_dir / "a.gguf")
    error = assert_refused(r, "--lora` on `mmproj` or `build`", case.adapter / "adapter_model.safetensors", out_dir)
    assert "vision" in error


@pytest.mark.slow
@pytest.mark.parametrize("bad_id, make, message", _bad_adapters(), ids=[b[0] for b in _bad_adapters()])
def test_adapter_gguf_refuses_bad_adapters(lora_case, tmp_path, bad_id, make, message):
    ckpt, case = lora_case("attn-r4")
    adapter = shutil.copytree(case.adapter, tmp_path / "adapter")
    names = make(adapter)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_refused(run_cli("lora", adapter, "--base", ckpt, "-o", out_dir / "a.gguf"), message, names, out_dir)


@pytest.mark.slow
def test_serve_with_adapter_gguf(lora_case, convert_cached, tmp_path):
    """serve --lora (Settings.loras): the same greedy reply as the merged LM served alone."""
    from fastapi.testclient import TestClient

    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.lora import open_adapter
    from minicpmv_gguf.serve import Settings, create_app

    ckpt, case = lora_case("mlp-r8")
    adapter, merged = tmp_path / "adapter.gguf", tmp_path / "merged.gguf"
    assert run_cli("lora", case.adapter, "--base", ckpt, "-o", adapter).returncode == 0
    convert_lm(ckpt, merged, outtype="f32", loras=[open_adapter(case.adapter)])
    body = {"messages": [{"role": "user", "content": "Tell me about the house."}], "temperature": 0, "max_tokens": 12}

    def reply(settings):
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

    base = convert_cached(ckpt, "f32")
    tuned = reply(Settings(lm=merged))
    assert reply(Settings(lm=base, loras=((adapter, 1.0),))) == tuned != reply(Settings(lm=base))
