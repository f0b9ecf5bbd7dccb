"""Vision parity: our mmproj GGUF in libmtmd (llama-cpp-python) against transformers in float32.

Image embeddings are compared per image chunk (overview, then slices), and one text+image prompt is
compared end to end (token sequence, then last-position logits) with the LM GGUF.

Preprocessing: mtmd's bicubic resize is a port of Pillow's fixed-point resampler, which HF's PIL image
processor also uses, so a resize alone costs no precision (measured: resampled images match as closely as
unresized ones). mtmd and HF still disagree on some inputs; those are listed at DIVERGENT, never in CASES.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicpmv_gguf.metrics import cosine_rows, nmse
from minicpmv_gguf.verify.bounds import MMPROJ
from minicpmv_gguf.verify.reference import load_llama
from minicpmv_gguf.verify.vision import (
    hf_image_embeddings,
    hf_last_logits,
    hf_letterboxed_embeddings,
    hf_prompt_inputs,
    mtmd_image_embeddings,
    mtmd_last_logits,
    mtmd_prompt_from_hf,
    mtmd_prompt_ids,
)

MODES = ["16x", "4x"]
# (width, height) for the tiny checkpoint (slice size 112). Every case gives the same chunk count and
# token counts in mtmd and HF.
# - 112x112: one chunk, no resize in either pipeline: the pixels are bit-identical.
# - 224x224 (2x2), 224x336 (3 rows x 2), 224x112 (1x2): the slice grid tiles the original exactly, so the
#   slices are cut from untouched pixels; only the overview is downscaled (bicubic in both).
# - 300x200: overview and slices both resampled (the refined image keeps the 3:2 aspect, so no padding).
# - 100x100: an upscaled small image; square, so 16x's stretch equals HF's aspect-preserving resize.
# - 4x only, 56x112 and 150x80: small non-square images, upscaled keeping the aspect in both.
SHARED = [(112, 112), (224, 224), (224, 336), (224, 112), (300, 200), (100, 100)]
CASES = [("16x", s) for s in SHARED] + [("4x", s) for s in SHARED + [(56, 112), (150, 80)]]

# Inputs where mtmd's preprocessing differs from HF's (llama-cpp-python 0.3.36). Each is compared with
# an HF run given the pixels mtmd uses, which shows the mmproj is right and the gap is preprocessing only:
# - "letterbox": when the refined grid's aspect differs from the image's, mtmd fits the image into it
#   and pads with black (PAD_CEIL); HF stretches. Plain HF vs mtmd: cosine as low as 0.2 on those slices.
# - "stretch": 16x, both sides <= the slice size: mtmd stretches to a square (56x112 -> 112x112,
#   4 tokens); HF keeps the aspect (3 tokens), so even the token counts differ.
# Not tested: 16x with one side > 112 but area <= 112^2 (e.g. 150x80): mtmd slices, HF does not.
DIVERGENT = [
    ("16x", (200, 120), "letterbox"),
    ("16x", (150, 150), "letterbox"),
    ("4x", (640, 480), "letterbox"),
    ("16x", (56, 112), "stretch"),
]

# F32 bounds (the spec's); minicpmv_gguf/verify/bounds.py gives the measurements.
F32_MIN_COS, F32_MAX_NMSE = MMPROJ["F32"]


def case_id(value) -> str | None:
    """Readable parametrize ids: 224x336 rather than size2."""
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else None


def image_for(size: tuple[int, int]):
    from minicpmv_gguf.verify.reference import make_image

    return make_image(*size, seed=size[0] * 1000 + size[1])


@pytest.fixture(scope="module")
def convert_mmproj_cached(tiny_ckpt, tmp_path_factory):
    """mmproj(mode, outtype) -> path, each made once by minicpmv_gguf.mmproj.convert_mmproj."""
    from minicpmv_gguf.mmproj import convert_mmproj

    cache: dict[tuple[str, str], object] = {}
    out_dir = tmp_path_factory.mktemp("mmproj")

    def convert(mode: str, outtype: str = "f32"):
        if (mode, outtype) not in cache:
            out = out_dir / f"mmproj-{mode}-{outtype}.gguf"
            convert_mmproj(tiny_ckpt, out, mode=mode, outtype=outtype)
            cache[mode, outtype] = out
        return cache[mode, outtype]

    return convert


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """(float32 model, processor) with the PIL image backend: the resampler mtmd reproduces."""
    from minicpmv_gguf.verify.reference import load_processor, load_reference_model

    return load_reference_model(tiny_ckpt), load_processor(tiny_ckpt, pil=True)


@pytest.fixture(scope="module")
def hf_embeddings(reference):
    """(mode, size) -> HF per-chunk embeddings, computed once."""
    cache: dict = {}

    def get(mode, size):
        if (mode, size) not in cache:
            cache[mode, size] = hf_image_embeddings(*reference, image_for(size), mode)
        return cache[mode, size]

    return get


@pytest.fixture(scope="module")
def llm(convert_cached, tiny_ckpt):
    """The F32 LM GGUF; mtmd needs its vocabulary (chunk framing) and width (mm.down check)."""
    return load_llama(convert_cached(tiny_ckpt, "f32"), n_ctx=512, logits_all=False)


def compare(got: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """(worst per-token cosine, worst per-chunk NMSE) after checking chunk and token counts."""
    counts = [len(x) for x in got], [len(x) for x in ref]
    assert counts[0] == counts[1], f"tokens per chunk: mtmd {counts[0]} vs HF {counts[1]}"
    cos = min(float(cosine_rows(g, r).min()) for g, r in zip(got, ref))
    return cos, max(nmse(g, r) for g, r in zip(got, ref))


@pytest.mark.parametrize("mode, size", CASES, ids=case_id)
def test_image_embeddings_match_f32(llm, convert_mmproj_cached, hf_embeddings, mode, size):
    got = mtmd_image_embeddings(llm, convert_mmproj_cached(mode, "f32"), image_for(size))
    cos, err = compare(got, hf_embeddings(mode, size))
    print(f"{mode} {size}: tokens {[len(x) for x in got]}, min cos {cos:.7f}, worst NMSE {err:.3g}")
    assert cos >= F32_MIN_COS and err <= F32_MAX_NMSE, (cos, err)


@pytest.mark.parametrize("mode, size, kind", DIVERGENT, ids=case_id)
def test_divergent_preprocessing_matches_emulation(llm, convert_mmproj_cached, reference, mode, size, kind):
    """The same mmproj matches HF once HF gets mtmd's pixels, so only the preprocessing differs."""
    from PIL import Image

    model, processor = reference
    image = image_for(size)
    if kind == "letterbox":
        ref = hf_letterboxed_embeddings(model, processor, image, mode)
    else:  # stretch: HF on the already-stretched square takes no resize, like mtmd's overview
        side = processor.image_processor.scale_resolution
        ref = hf_image_embeddings(model, processor, image.resize((side, side), Image.BICUBIC), mode)
    cos, err = compare(mtmd_image_embeddings(llm, convert_mmproj_cached(mode, "f32"), image), ref)
    print(f"{mode} {size} ({kind}): min cos {cos:.7f}, worst NMSE {err:.3g}")
    assert cos >= F32_MIN_COS and err <= F32_MAX_NMSE, (cos, err)


# (outtype, min token cosine, max chunk NMSE), as `verify` applies them (minicpmv_gguf/verify/bounds.py).
REDUCED = [(t.lower(), *MMPROJ[t]) for t in ("F16", "BF16", "Q8_0")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("outtype, min_cos, max_nmse", REDUCED)
def test_image_embeddings_reduced_precision(
    llm, convert_mmproj_cached, hf_embeddings, mode, outtype, min_cos, max_nmse
):
    path = convert_mmproj_cached(mode, outtype)
    results = [
        compare(mtmd_image_embeddings(llm, path, image_for(s)), hf_embeddings(m, s)) for m, s in CASES if m == mode
    ]
    cos, err = min(r[0] for r in results), max(r[1] for r in results)
    print(f"{mode} {outtype}: min cos {cos:.7f}, worst NMSE {err:.3g} over {len(results)} images")
    assert cos >= min_cos and err <= max_nmse, (cos, err)


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]


# 112x112: one chunk. 224x336: an overview and 3 rows of 2 slices, so the framing includes
# </image><slice>, </slice><slice> and the "\n" between rows.
@pytest.mark.parametrize("size", [(112, 112), (224, 336)], ids=case_id)
@pytest.mark.parametrize("mode", MODES)
def test_prompt_with_image_matches_transformers(llm, convert_mmproj_cached, reference, mode, size):
    """Same token sequence (mtmd chunks vs HF input_ids), then last-position logits NMSE <= 1e-4, same top-1.

    Measured (F32 LM + F32 mmproj): NMSE 6e-8 .. 4e-7, max |dlogit| ~2e-3, top-1 equal.
    """
    model, processor = reference
    image, mmproj = image_for(size), convert_mmproj_cached(mode, "f32")
    prompt = mtmd_prompt_from_hf(processor, MESSAGES)  # <image_id>0</image_id> placed before the marker
    hf_ids = hf_prompt_inputs(processor, MESSAGES, image, mode)["input_ids"][0].tolist()
    mtmd_ids = mtmd_prompt_ids(llm, mmproj, prompt, image, processor.tokenizer.image_token_id)
    assert mtmd_ids == hf_ids, "\n".join(map(processor.tokenizer.decode, (mtmd_ids, hf_ids)))

    got = mtmd_last_logits(llm, mmproj, prompt, image)
    ref = hf_last_logits(model, processor, MESSAGES, image, mode)
    print(f"{mode} {size}: {len(hf_ids)} tokens, NMSE {nmse(got, ref):.3g}, top-1 {got.argmax()} vs {ref.argmax()}")
    assert nmse(got, ref) <= 1e-4 and got.argmax() == ref.argmax(), (nmse(got, ref), got.argmax(), ref.argmax())
