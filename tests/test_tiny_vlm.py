"""The trained tiny VLM (examples/minicpmv46-tiny-vlm) sees, through the toolkit's files.

Its held-out answers through the runtime score what benchmarks/bench_vision_quant.py measured, and a
blank image scores only the answer prior, so a broken vision path (a wrong tensor, order or kernel)
fails here even when every file loads and every embedding is finite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minicpmv_gguf import spec
from minicpmv_gguf.convert_hf_to_gguf import convert_lm
from minicpmv_gguf.mmproj import convert_mmproj
from minicpmv_gguf.runtime import GREEDY, open_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import scenes  # noqa: E402 - the generator the model was trained on

pytestmark = pytest.mark.slow  # a few hundred greedy answers per mode

CHECKPOINT = ROOT / "examples" / "minicpmv46-tiny-vlm"
N = 200
# Accuracy on the first N held-out questions with an F32 LM, from `python benchmarks/bench_vision_quant.py
# --tiny --n 200` (benchmarks/results/vision_quant_tiny.md), and for a blank image (the answer prior).
MEASURED = {"16x": 0.74, "4x": 0.695}
MEASURED_BLANK = {"16x": 0.30, "4x": 0.285}
# In that table every type from F32 down to Q5_0 gives the F32 answers exactly and Q4_0 flips 3 of 200
# (1.5 %); another CPU's kernels differ from these by less than Q4_0 does from F32. Six answers of slack
# is twice that, and a third of what separates a blank image from the real one, so a blind model fails.
SLACK = 0.03


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vlm") / "lm-f32.gguf"
    convert_lm(CHECKPOINT, out, outtype="f32")
    return out


def score(lm: Path, mmproj: Path, render) -> float:
    right = 0
    with open_model(lm, [mmproj], threads=2) as model:
        for scene, question, answer in scenes.held_out(N):
            with model.chat(n_ctx=512, sampling=GREEDY, max_tokens=6) as chat:
                right += scenes.answer_matches(chat.send(question, images=[render(scene)]).text, answer)
    return right / N


@pytest.mark.parametrize("outtype", ["f32", spec.BUILD_MMPROJ_TYPE])
@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_trained_model_sees(lm, tmp_path, mode, outtype):
    mmproj = tmp_path / f"mmproj-{mode}.gguf"
    convert_mmproj(CHECKPOINT, mmproj, mode=mode, outtype=outtype)
    seen = score(lm, mmproj, scenes.render)
    blind = score(lm, mmproj, lambda _scene: scenes.blank())
    assert seen >= MEASURED[mode] - SLACK, f"{mode} {outtype}: {seen:.1%} held-out, measured {MEASURED[mode]:.1%}"
    assert blind <= MEASURED_BLANK[mode] + SLACK, f"{mode} {outtype}: a blank image scores {blind:.1%}"
