"""minicpmv_gguf.native: the one log callback and its per-thread capture, handle lifetimes, saved states."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from minicpmv_gguf.errors import ClosedError, ModelLoadError
from minicpmv_gguf.native import Context, LanguageModel, Sampler, Vision, capture_log, failure_reason, llama_cpp, log

PACKAGE = Path(__file__).parent.parent / "minicpmv_gguf"
PREFIX, MORE = "The quick brown fox", " jumps over the lazy dog, and then it rests."


@pytest.fixture(scope="module")
def lm_path(tiny_files) -> Path:
    return tiny_files.lm


@pytest.fixture(scope="module")
def lm(lm_path):
    with LanguageModel.from_file(lm_path) as m:
        yield m


def context(lm, **kwargs) -> Context:
    return Context(lm, n_ctx=256, n_batch=64, threads=1, **kwargs)


def last_logits(ctx: Context, tokens: list[int], pos0: int) -> np.ndarray:
    ctx.decode(tokens, pos0, logits_last=True)
    return ctx.logits(len(tokens) - 1, len(tokens))[0]


# --------------------------------------------------------------------------------------------------
# the log callback


def test_log_callbacks_are_set_in_one_place_once():
    """llama.cpp keeps one global callback: a second setter anywhere would silently take the log away."""
    sources = {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    for setter in ("llama_log_set(", "mtmd_log_set(", "mtmd_helper_log_set(", "log.install("):
        where = {name: text.count(setter) for name, text in sources.items() if setter in text}
        assert where == {"native/lib.py" if setter == "log.install(" else "native/log.py": 1}, (setter, where)
    llama_cpp()
    first = list(log._installed)
    log.install(llama_cpp(), llama_cpp().mtmd_cpp)
    assert len(first) == 1 and log._installed == first  # installed once, and the callback is kept alive


def test_two_threads_capture_only_their_own_lines():
    """Lines interleaved line by line (and a line in pieces) across two threads reach the right capture."""
    barrier, seen = threading.Barrier(2), {}

    def worker(name: str) -> None:
        with capture_log() as lines:
            for i in range(20):
                barrier.wait()  # both threads log line i before either goes on
                log.forward(1, f"{name}: line {i}\n".encode(), None)
            log.forward(3, f"load: error: {name} ".encode(), None)
            barrier.wait()  # the other thread's half line comes in between
            log.forward(5, b"broke\n", None)
        seen[name] = lines

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        assert seen[name] == [f"{name}: line {i}" for i in range(20)] + [f"load: error: {name} broke"]
        assert failure_reason(seen[name]) == f"error: {name} broke"


def test_two_threads_loading_models_each_see_their_own_log(lm_path, tmp_path):
    """Real llama.cpp calls at once: each thread's capture (and error message) names its own file only."""
    good = shutil.copy(lm_path, tmp_path / "good.gguf")
    other = shutil.copy(lm_path, tmp_path / "other.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model\n")
    barrier, seen, errors = threading.Barrier(3), {}, {}

    def load(path: Path) -> None:
        barrier.wait()
        with capture_log() as lines:
            try:
                LanguageModel.from_file(path).close()
            except ModelLoadError as err:
                errors[path.name] = str(err)
        seen[path.name] = "\n".join(lines)

    threads = [threading.Thread(target=load, args=(Path(p),)) for p in (good, other, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert str(good) in seen["good.gguf"] and str(other) in seen["other.gguf"] and str(bad) in seen["bad.gguf"]
    for name, text in seen.items():
        assert all(str(tmp_path / n) not in text for n in seen if n != name), name
    assert list(errors) == ["bad.gguf"]
    assert errors["bad.gguf"] == f"{bad}: llama.cpp cannot load it: invalid magic characters: 'not ', expected 'GGUF'"


def test_missing_llama_cpp_python_is_one_toolkit_error(monkeypatch):
    from minicpmv_gguf.errors import ToolkitError
    from minicpmv_gguf.native import lib

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    monkeypatch.setattr(lib, "_loaded", {})
    for load in (lib.llama_cpp, lib.mtmd, lib.ggml_base):
        with pytest.raises(ToolkitError, match=r"^llama-cpp-python is not installed \(pip install"):
            load()


# --------------------------------------------------------------------------------------------------
# handles


def test_close_twice_is_a_no_op_and_use_after_close_raises(lm_path, tiny_files):
    from minicpmv_gguf.runtime import GREEDY, read_lm_header, read_mmproj_header

    lm = LanguageModel(read_lm_header(lm_path))
    ctx = context(lm)
    vision = Vision(read_mmproj_header(tiny_files.mm16), lm, threads=1)
    media = vision.tokenize(np.zeros((112, 112, 3), np.uint8))
    sampler = Sampler(GREEDY, [], lm.n_vocab)
    ctx.decode(lm.tokenize(PREFIX), 0, logits_last=True)
    assert sampler.sample(ctx) >= 0
    lm.close()  # closes what was made on it first: the context and the mmproj
    for handle in (lm, ctx, vision, media, sampler):
        handle.close()
    calls = [
        lambda: lm.tokenize(PREFIX),
        lambda: lm.piece(0),
        lambda: context(lm),
        lambda: ctx.decode([1], 0, logits_last=True),
        lambda: ctx.save_state(),
        lambda: ctx.clear(),
        lambda: vision.tokenize(np.zeros((112, 112, 3), np.uint8)),
        lambda: sampler.sample(ctx),
    ]
    for call in calls:
        with pytest.raises(ClosedError, match="is closed"):
            call()


def test_media_chunks_closed_before_encoding_raise(lm_path, tiny_files):
    from minicpmv_gguf.runtime import read_lm_header, read_mmproj_header

    with LanguageModel(read_lm_header(lm_path)) as lm, Vision(read_mmproj_header(tiny_files.mm16), lm, threads=1) as v:
        media = v.tokenize(np.zeros((112, 112, 3), np.uint8))
        part = next(p for p in media.parts if not isinstance(p, list))
        assert v.encode(part).shape == (part.n_tokens, lm.n_embd)
        media.close()
        with pytest.raises(ClosedError, match="the image's chunks is closed"):
            v.encode(part)


def test_contexts_on_one_model_decode_in_two_threads(lm):
    """Two worker threads, a context each on one model: the same logits as one thread alone."""
    tokens = lm.tokenize(PREFIX + MORE)
    with context(lm) as ctx:
        want = last_logits(ctx, tokens, 0)
    got = {}

    def work(i: int) -> None:
        with context(lm) as ctx:
            for _ in range(5):
                ctx.clear()
                got[i] = last_logits(ctx, tokens, 0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(got[0], want) and np.array_equal(got[1], want)


# --------------------------------------------------------------------------------------------------
# saved sequence states


def test_restored_state_gives_the_same_logits_exactly(lm):
    """A prefix cache's contract: save after a prefix, go on, restore, evaluate the same tokens again."""
    prefix, more = lm.tokenize(PREFIX), lm.tokenize(MORE)
    with context(lm) as ctx, context(lm) as other, context(lm) as fresh:
        ctx.decode(prefix, 0, logits_last=True)
        state = ctx.save_state()
        first = last_logits(ctx, more, len(prefix))
        assert ctx.restore_state(state)
        assert np.array_equal(last_logits(ctx, more, len(prefix)), first)
        assert other.restore_state(state)  # another context of the same model takes it too
        assert np.array_equal(last_logits(other, more, len(prefix)), first)
        fresh.decode(prefix, 0, logits_last=True)  # and it is what evaluating the prefix gives
        assert np.array_equal(last_logits(fresh, more, len(prefix)), first)


def test_a_refused_state_clears_the_memory(lm):
    prefix = lm.tokenize(PREFIX)
    with context(lm) as ctx, context(lm) as fresh:
        want = last_logits(fresh, prefix, 0)
        ctx.decode(prefix, 0, logits_last=True)
        state = ctx.save_state()
        for broken in (state[: len(state) // 2], b"\0" * 8):
            assert not ctx.restore_state(broken)
            # Positions from 0 again, as in an empty memory (a kept sequence would refuse them).
            assert np.array_equal(last_logits(ctx, prefix, 0), want)


def test_extra_weight_buffers_are_off_exactly_on_amx_builds():
    # With them this llama.cpp segfaults decoding quantized weights of this model on AMX CPUs.
    from minicpmv_gguf.native import llama_cpp
    from minicpmv_gguf.native.lib import has_amx

    L = llama_cpp()
    assert L.llama_model_default_params().use_extra_bufts is (not has_amx(L))
    assert L.llama_cpp.llama_model_default_params().use_extra_bufts is (not has_amx(L))
