"""The CPU runtime (minicpmv_gguf.runtime) against transformers, its bookkeeping, and bad input.

Parity: the F32 GGUF pair of the tiny checkpoint and the float32 transformers model (SDPA, PIL image
processor) generate the same greedy tokens, and the runtime's prompt is the processor's input_ids.
112x112 images are the tiny slice size: neither pipeline resizes them (test_parity_vision.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice

import pytest

from tests.runtime_cases import BAD_INPUTS, N_THREADS, QUESTION

N_TOKENS = 32


@pytest.fixture(scope="module")
def model(tiny_files):
    from minicpmv_gguf.runtime import open_model

    with open_model(tiny_files.lm, [tiny_files.mm16, tiny_files.mm4], threads=N_THREADS) as m:
        yield m


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """(float32 model, processor) with the PIL image backend, as in test_parity_vision.py."""
    import torch
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    from tests.fixtures.tiny_checkpoint import load_processor, load_reference_model

    processor = load_processor(tiny_ckpt)
    if not isinstance(processor.image_processor, MiniCPMV4_6ImageProcessorPil):
        processor.image_processor = MiniCPMV4_6ImageProcessorPil.from_pretrained(tiny_ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # token-by-token decoding of a tiny model: 20x faster than 2 contending threads
    yield load_reference_model(tiny_ckpt), processor
    torch.set_num_threads(threads)


def hf_inputs(processor, messages, images, mode="16x", thinking=False):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
    if not images:
        return processor(text=[text], return_tensors="pt")
    return processor(text=[text], images=[images], downsample_mode=mode, return_tensors="pt")


def hf_greedy(reference, messages, images, mode="16x", n=N_TOKENS) -> list[int]:
    """transformers' greedy continuation (do_sample=False), end-of-turn token dropped."""
    import torch

    model, processor = reference
    inputs = hf_inputs(processor, messages, images, mode)
    extra = {} if not images else {k: inputs[k] for k in ("pixel_values", "target_sizes")}
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=n,
            do_sample=False,
            downsample_mode=mode,
            **extra,
        )
    out = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = {processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    return out[: next((i for i, t in enumerate(out) if t in eos), len(out))]


def user(text, n_images=0):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def as_hf_ids(ids: list[int], processor) -> list[int]:
    return [processor.tokenizer.image_token_id if i == -1 else i for i in ids]


def open_image(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


# --------------------------------------------------------------------------------------------------
# parity with transformers


def test_greedy_text_matches_transformers(model, reference):
    from minicpmv_gguf.runtime import GREEDY

    with model.chat(sampling=GREEDY, max_tokens=N_TOKENS) as chat:
        reply = chat.send(QUESTION)
    want = hf_greedy(reference, [user(QUESTION)], [])
    assert len(want) >= 16 and list(reply.token_ids) == want


@pytest.mark.parametrize("detail, mode", [("normal", "16x"), ("high", "4x")])
def test_greedy_with_image_matches_transformers(model, reference, tiny_files, detail, mode):
    from minicpmv_gguf.runtime import GREEDY

    image = open_image(tiny_files.image_a)
    with model.chat(detail=detail, sampling=GREEDY, max_tokens=N_TOKENS) as chat:
        ids = chat.prompt_ids(QUESTION, [image])
        reply = chat.send(QUESTION, [image])
    want_ids = hf_inputs(reference[1], [user(QUESTION, 1)], [image], mode)["input_ids"][0].tolist()
    assert as_hf_ids(ids, reference[1]) == want_ids
    want = hf_greedy(reference, [user(QUESTION, 1)], [image], mode)
    assert len(want) >= 16 and list(reply.token_ids) == want
    assert reply.timings.image_tokens == {"16x": 4, "4x": 16}[mode]


def test_second_turn_matches_transformers(model, reference, tiny_files):
    """Turn 2 reuses turn 1's memory (rolled back to before the reply, which the template rewrites) and
    still generates what transformers generates from the whole conversation."""
    from minicpmv_gguf.runtime import GREEDY

    a, b = open_image(tiny_files.image_a), open_image(tiny_files.image_b)
    with model.chat(sampling=GREEDY, max_tokens=8) as chat:
        chat.send(QUESTION, [a])
        messages = chat.messages + [user("And this one?", 1)]
        ids = chat.prompt_ids("And this one?", [b])
        reply = chat.send("And this one?", [b], max_tokens=N_TOKENS)
    hf_ids = hf_inputs(reference[1], messages, [a, b])["input_ids"][0].tolist()
    assert as_hf_ids(ids, reference[1]) == hf_ids  # <image_id>0 and <image_id>1
    assert 0 < reply.timings.cached_tokens < reply.timings.prompt_tokens
    want = hf_greedy(reference, messages, [a, b])
    assert len(want) >= 16 and list(reply.token_ids) == want


@pytest.mark.parametrize("thinking", [False, True])
def test_prompt_ids_match_processor(model, reference, tiny_files, thinking):
    """A system prompt, two images in one turn, thinking on and off: the processor's input_ids."""
    a, b = open_image(tiny_files.image_a), open_image(tiny_files.image_b)
    with model.chat(thinking=thinking, system="You are terse.") as chat:
        ids = chat.prompt_ids("Compare the two images.", [a, b])
    messages = [{"role": "system", "content": "You are terse."}, user("Compare the two images.", 2)]
    want = hf_inputs(reference[1], messages, [a, b], thinking=thinking)["input_ids"][0].tolist()
    assert as_hf_ids(ids, reference[1]) == want
    tail = reference[1].tokenizer.decode(want[-4:])
    assert tail.endswith("<think>\n" if thinking else "</think>\n\n")


def test_user_text_is_nfc_normalised_like_the_tokenizer(model, reference):
    """llama.cpp does not apply the tokenizer's NFC step (test_parity_tokenizer.py); the runtime does."""
    question = "Is this a cafe\u0301 in Zu\u0308rich?"
    with model.chat() as chat:
        ids = chat.prompt_ids(question)
    assert ids == hf_inputs(reference[1], [user(question)], [])["input_ids"][0].tolist()


def test_video_frames_have_the_video_layout(model, reference, tiny_files):
    """1 fps from a 2.5 s GIF: 3 frames, each <image>...</image>, back to back, no <image_id> tags."""
    tok = reference[1].tokenizer
    with model.chat() as chat:
        ids = chat.prompt_ids("Describe the video.", video=tiny_files.gif)
    frame = "<image>" + "<|image_pad|>" * 4 + "</image>"  # 16x: each frame is one 112x112 overview
    text = (
        f"<|im_start|>user\n{frame * 3}\nDescribe the video.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert as_hf_ids(ids, reference[1]) == tok(text, add_special_tokens=False).input_ids


# --------------------------------------------------------------------------------------------------
# bookkeeping: timings, sampling, reset, interruption, memory


def test_timings_and_token_counts_add_up(model, tiny_files):
    with model.chat(max_tokens=6, sampling=_seeded(1)) as chat:
        first = chat.send(QUESTION, [tiny_files.image_a, tiny_files.image_c])
        second = chat.send("And the colours?")
    for reply in (first, second):
        t = reply.timings
        assert t.prompt_tokens == t.text_tokens + t.image_tokens and t.text_tokens > 0
        assert t.generated_tokens == len(reply.token_ids) <= 6
        assert t.total_s == pytest.approx(t.encode_s + t.prefill_s + t.decode_s, abs=1e-9)
        assert 0 < t.first_token_s <= t.total_s and min(t.encode_s, t.prefill_s, t.decode_s) >= 0
        assert json.loads(json.dumps(t.as_dict()))["prompt_tokens"] == t.prompt_tokens
    assert first.timings.images_encoded == 2 and first.timings.cached_tokens == 0 and first.timings.encode_s > 0
    assert first.timings.image_tokens == 4 + 28  # 112x112: 4; 300x200 in 16x: a 4-token overview + 2 x 12
    s = second.timings
    assert s.images_encoded == 0 and s.encode_s == 0 and s.image_tokens == first.timings.image_tokens
    # turn 1's prompt was kept but for its "<think>\n\n</think>\n\n" (4 tokens), which the template drops
    assert s.cached_tokens == first.timings.prompt_tokens - 4


def _seeded(seed):
    from minicpmv_gguf.runtime import Sampling

    return Sampling(seed=seed)


def test_sampling_defaults_and_seeds(model):
    from minicpmv_gguf.errors import InputError
    from minicpmv_gguf.runtime import Sampling

    s = Sampling()
    assert (s.temperature, s.top_p, s.top_k, s.repeat_penalty) == (0.7, 0.8, 100, 1.05)  # OpenBMB's
    replies = []
    for seed in (7, 7, 8):
        with model.chat(sampling=_seeded(seed), max_tokens=24) as chat:
            replies.append(chat.send(QUESTION).token_ids)
    assert replies[0] == replies[1] != replies[2]
    with pytest.raises(InputError, match="top_p"):
        Sampling(top_p=0)


def test_reset_forgets_the_conversation(model, tiny_files):
    from minicpmv_gguf.runtime import GREEDY

    with model.chat(sampling=GREEDY, max_tokens=8) as chat:
        fresh = chat.send(QUESTION, [tiny_files.image_a])
        chat.send("And now?")
        chat.reset()
        again = chat.send(QUESTION, [tiny_files.image_a])
        assert chat.messages == [chat.messages[0], {"role": "assistant", "content": chat.messages[1]["content"]}]
    assert again.token_ids == fresh.token_ids and again.timings.cached_tokens == 0


def test_closing_the_stream_keeps_the_partial_reply(model, reference, tiny_files):
    """Stopping a reply (Ctrl-C in the CLI) keeps what was said; the next turn is still exact."""
    from minicpmv_gguf.runtime import GREEDY

    image = open_image(tiny_files.image_a)
    with model.chat(sampling=GREEDY, max_tokens=N_TOKENS) as chat:
        stream = chat.stream(QUESTION, [image])
        pieces = list(islice(stream, 3))
        stream.close()
        stopped = chat.last_reply
        assert stopped.stop_reason == "interrupted" and 3 <= len(stopped.token_ids) < N_TOKENS
        assert chat.messages[-1]["content"].startswith("".join(pieces))
        messages = chat.messages + [user("Go on.")]
        reply = chat.send("Go on.")
    assert list(reply.token_ids) == hf_greedy(reference, messages, [image])


def test_vision_is_loaded_only_while_encoding(model, tiny_files):
    with model.chat(max_tokens=2) as chat:
        chat.send(QUESTION, [tiny_files.image_a])
        assert not chat.vision_loaded  # only the LM stays resident between turns
    with model.chat(max_tokens=2, keep_vision=True) as chat:
        chat.send(QUESTION, [tiny_files.image_a])
        assert chat.vision_loaded


def test_mmproj_is_freed_before_the_text_after_the_last_image(model, tiny_files, monkeypatch):
    # The turn's memory peak was the text after the image with the mmproj still loaded (full size: 1.92 GB).
    with model.chat(max_tokens=2) as chat:
        ids = chat.prompt_ids(QUESTION, [tiny_files.image_a])
        image_end = len(ids) - ids[::-1].index(-1)  # the position after the last image embedding
        seen, decode = [], chat.context.decode

        def spy(tokens, pos0, *, logits_last):
            seen.append((pos0 >= image_end, chat.vision_loaded))
            decode(tokens, pos0, logits_last=logits_last)

        monkeypatch.setattr(chat.context, "decode", spy)
        chat.send(QUESTION, [tiny_files.image_a])
    assert (False, True) in seen and (True, False) in seen and (True, True) not in seen, seen


def test_physical_cores():
    import os

    from minicpmv_gguf.runtime import physical_cores

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------------
# media


def test_video_frames_at_one_per_second(tiny_files, tmp_path):
    from minicpmv_gguf.runtime.media import frame_times, load_video

    assert frame_times(2.5, 16) == [0.0, 1.0, 2.0]
    assert frame_times(100.0, 4) == [0.0, 33.0, 66.0, 99.0]  # long videos: spread evenly
    frames = load_video(tiny_files.gif)
    assert [f.source.rsplit("#", 1)[1] for f in frames] == ["0", "4", "8"]
    assert len(load_video(tiny_files.gif, max_frames=2)) == 2


def test_video_file_with_pyav(model, tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    from minicpmv_gguf.runtime.media import load_video

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:  # 3.5 s at 10 fps; frame i is grey level 6 i
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(35):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    frames = load_video(path)
    assert [f.source.rsplit("@", 1)[1] for f in frames] == ["0.0s", "1.0s", "2.0s", "3.0s"]
    assert [round(f.rgb.mean() / 6) for f in frames] == pytest.approx([0, 10, 20, 30], abs=1)
    with model.chat(max_tokens=2) as chat:
        assert chat.send("What happens?", video=path).timings.image_tokens == 4 * 4


def test_video_without_pyav_says_how_to_get_it(tmp_path, monkeypatch):
    from minicpmv_gguf.errors import InputError
    from minicpmv_gguf.runtime.media import load_video

    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(InputError, match="needs PyAV.*pip install av"):
        load_video(path)


def test_image_with_alpha_is_composited_on_white():
    from PIL import Image

    from minicpmv_gguf.runtime import load_image

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert load_image(rgba).rgb.min() == 255


# --------------------------------------------------------------------------------------------------
# bad input: each case in its own process, so an abort in llama.cpp or libmtmd would show as a signal

_API_RUNNER = """
import json, sys
from minicpmv_gguf.errors import ToolkitError
from minicpmv_gguf.runtime import GREEDY, open_model
case = json.loads(sys.argv[1])
try:
    with open_model(case["lm"], case["mmproj"], threads=1) as model:
        with model.chat(detail=case["detail"], sampling=GREEDY, n_ctx=case["n_ctx"], max_tokens=2) as chat:
            chat.send(case["text"], case["images"], video=case["video"])
except ToolkitError as err:
    print(type(err).__name__ + ": " + str(err))
    sys.exit(3)
print("no error")
"""


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_raises_the_toolkit_error(case, tiny_files, bad_files):
    r = subprocess.run(
        [sys.executable, "-c", _API_RUNNER, json.dumps(case.resolve(tiny_files, bad_files))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 3, f"exit {r.returncode} (negative = killed by a signal)\n{r.stdout}{r.stderr[-2000:]}"
    assert r.stdout.startswith(case.error + ": ") and case.words in r.stdout, r.stdout


# --------------------------------------------------------------------------------------------------
# the chat template


RELEASED_TEMPLATE = "tests/data/released_chat_template.jinja"


@pytest.mark.parametrize("thinking", [False, True])
def test_released_template_renders_as_transformers_does(reference, thinking):
    """The released model's template (raise_exception, namespaces, <think> handling) through our sandbox."""
    from pathlib import Path

    from minicpmv_gguf.runtime.prompt import ChatTemplate

    source = (Path(__file__).parent.parent / RELEASED_TEMPLATE).read_text(encoding="utf-8")
    messages = [
        {"role": "system", "content": "Be brief."},
        user("What is this?", 1),
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA cat."},
        user("And these?", 2),
    ]
    want = reference[1].apply_chat_template(
        messages, chat_template=source, add_generation_prompt=True, tokenize=False, enable_thinking=thinking
    )
    template = ChatTemplate(source)
    got = template.render(messages, enable_thinking=thinking)
    assert got == want and got.count("<|image_pad|>") == 3 and "hmm" not in got  # past reasoning dropped
    assert got[: template.shared_prefix(messages, enable_thinking=thinking)].endswith("<|im_start|>assistant\n")


def test_template_errors_are_input_errors():
    from pathlib import Path

    from minicpmv_gguf.errors import InputError
    from minicpmv_gguf.runtime.prompt import ChatTemplate

    template = ChatTemplate((Path(__file__).parent.parent / RELEASED_TEMPLATE).read_text(encoding="utf-8"))
    with pytest.raises(InputError, match="System message cannot contain images"):
        template.render([{"role": "system", "content": [{"type": "image"}]}, user("Hi")], enable_thinking=False)


def test_split_reasoning():
    from minicpmv_gguf.runtime.reply import split_reasoning

    assert split_reasoning("Let me see.\n</think>\n\nA cat.") == ("Let me see.", "A cat.")
    assert split_reasoning(" A cat. ") == (None, "A cat.")
