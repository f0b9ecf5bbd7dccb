"""The same image (and prompt) through libmtmd (llama-cpp-python) and transformers, for verify and the tests.

The mtmd side is `native.Vision` next to a llama-cpp-python `Llama`, fed raw RGB bytes, so no image
codec sits between the two pipelines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ToolkitError
from ..native import MEDIA_MARKER, MediaChunks, Vision
from ..native.context import logits_row
from ..spec import image_id
from .reference import N_THREADS

# --------------------------------------------------------------------------------------------------
# libmtmd (llama-cpp-python)


@contextmanager
def _mtmd_chunks(llm, mmproj_path: Path, text: str, image) -> Iterator[tuple[Vision, MediaChunks]]:
    """Yield (libmtmd next to the Llama `llm`, the chunks of `text` with one image at its media marker).

    Raises:
        RuntimeError: libmtmd cannot load the mmproj or preprocess the image (a failed check for verify).
    """
    threads = getattr(llm, "n_threads", N_THREADS)  # as many as the Llama was given
    # Raw RGB: mtmd sees exactly the bytes that the HF processor gets (no PNG/JPEG round trip).
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    try:
        vision = Vision.beside(mmproj_path, llm, threads=threads)
    except ToolkitError as err:
        raise RuntimeError(str(err)) from err
    with vision:
        try:
            media = vision.tokenize(rgb, text)
        except ToolkitError as err:
            raise RuntimeError(str(err)) from err
        try:
            yield vision, media
        finally:
            media.close()


def mtmd_image_embeddings(llm, mmproj_path: Path, image) -> list[np.ndarray]:
    """float32 [n_tokens, n_embd] per image chunk (overview first, then slices row-major) from libmtmd."""
    with _mtmd_chunks(llm, mmproj_path, MEDIA_MARKER, image) as (vision, media):
        return [vision.encode(part) for part in media.parts if not isinstance(part, list)]


def mtmd_prompt_ids(llm, mmproj_path: Path, prompt_text: str, image, image_token_id: int) -> list[int]:
    """mtmd's token sequence for the prompt, each image-chunk position written as `image_token_id`.

    Comparable with HF input_ids, where every image feature sits on an `<|image_pad|>` token.
    """
    ids: list[int] = []
    with _mtmd_chunks(llm, mmproj_path, prompt_text, image) as (_, media):
        for part in media.parts:
            ids += part if isinstance(part, list) else [image_token_id] * part.n_tokens
    return ids


def mtmd_last_logits(llm, mmproj_path: Path, prompt_text: str, image) -> np.ndarray:
    """float32 logits [n_vocab] of the last prompt position, evaluated the way MTMDChatHandler does.

    Text chunks go through `llm.eval`, image chunks through `mtmd_helper_eval_chunk_single`, all on
    sequence 0 with consecutive positions; the memory is cleared first.
    """
    llm.reset()
    with _mtmd_chunks(llm, mmproj_path, prompt_text, image) as (vision, media):
        for part in media.parts:
            if isinstance(part, list):
                llm.eval(part)
            else:
                llm.n_tokens = vision.eval_chunk(llm.ctx, part, llm.n_tokens, llm.n_batch)
        # Row -1 = the last token of the last decode, whether it was a text or an image batch.
        return logits_row(llm.ctx, -1, llm.n_vocab())


# --------------------------------------------------------------------------------------------------
# transformers (float32 reference)


def hf_image_inputs(processor, image, mode: str) -> dict:
    """pixel_values and target_sizes of one image from the HF image processor in `mode`."""
    out = processor.image_processor(images=[image], downsample_mode=mode, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "target_sizes": out["target_sizes"]}


def hf_image_embeddings(model, processor, image, mode: str) -> list[np.ndarray]:
    """float32 [n_tokens, n_embd] per overview/slice from transformers' get_image_features."""
    import torch

    with torch.no_grad():
        feats = model.get_image_features(**hf_image_inputs(processor, image, mode), downsample_mode=mode)
    return [f.reshape(-1, f.shape[-1]).float().numpy() for f in feats.pooler_output]


def hf_letterboxed_embeddings(model, processor, image, mode: str) -> list[np.ndarray]:
    """HF features with mtmd's slices: the refined image is fitted (aspect kept) and centred on black.

    mtmd resizes the image it cuts slices from with padding (clip.cpp's default `image_pad_rf = PAD_CEIL`)
    where HF stretches it; the overview and the slice grid are the same in both, so they come from HF.
    """
    import math

    import torch
    from PIL import Image

    ip = processor.image_processor
    out = ip(images=[image], downsample_mode=mode, return_tensors="pt")
    (rows, cols), sizes = out["grids"][0], out["target_sizes"].tolist()
    tile_h, tile_w = sizes[1][0] * ip.patch_size, sizes[1][1] * ip.patch_size
    big_w, big_h = cols * tile_w, rows * tile_h
    # float32 like mtmd-image.cpp: scale = min(W/w, H/h); new side = min(ceil(side * scale), target side)
    scale = min(np.float32(big_w) / np.float32(image.width), np.float32(big_h) / np.float32(image.height))
    new_w = min(math.ceil(np.float32(image.width) * scale), big_w)
    new_h = min(math.ceil(np.float32(image.height) * scale), big_h)
    canvas = Image.new("RGB", (big_w, big_h))  # black, mtmd's image_pad_color_rf
    fitted = image.convert("RGB").resize((new_w, new_h), Image.BICUBIC)
    canvas.paste(fitted, ((big_w - new_w) // 2, (big_h - new_h) // 2))
    pixels = np.asarray(canvas).transpose(2, 0, 1)  # CHW, as the processor's arrays
    overview_len = sizes[0][0] * sizes[0][1] * ip.patch_size
    strips = [out["pixel_values"][0, ..., :overview_len].numpy()]
    for r in range(rows):
        for c in range(cols):
            tile = pixels[:, r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w]
            tile = ip.normalize(ip.rescale(tile, ip.rescale_factor), ip.image_mean, ip.image_std)
            strips.append(ip.reshape_by_patch(tile, ip.patch_size))
    pixel_values = torch.from_numpy(np.concatenate(strips, axis=-1)[None]).float()
    with torch.no_grad():
        feats = model.get_image_features(
            pixel_values=pixel_values, target_sizes=out["target_sizes"], downsample_mode=mode
        )
    return [f.reshape(-1, f.shape[-1]).float().numpy() for f in feats.pooler_output]


def hf_prompt_inputs(processor, messages_or_text, image, mode: str) -> dict:
    """Processor outputs (input_ids, pixel_values, target_sizes, ...) for chat messages or a raw prompt.

    Raw text must carry the chat template's `<|image_pad|>` placeholder where the image goes.
    """
    text = messages_or_text
    if not isinstance(text, str):
        text = processor.apply_chat_template(text, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[[image]], downsample_mode=mode, return_tensors="pt")


def hf_last_logits(model, processor, messages_or_text, image, mode: str) -> np.ndarray:
    """float32 logits [vocab] of the last prompt position from the transformers model (batch 1)."""
    import torch

    inputs = hf_prompt_inputs(processor, messages_or_text, image, mode)
    with torch.no_grad():
        out = model(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            target_sizes=inputs["target_sizes"],
            downsample_mode=mode,
        )
    return out.logits[0, -1].float().numpy()


def mtmd_prompt_from_hf(processor, messages_or_text) -> str:
    """The chat-rendered prompt with HF's image placeholder swapped for mtmd's media marker.

    mtmd emits no `<image_id>0</image_id>` before the image (HF does), so it is written in front of the
    marker to give both runtimes the same token sequence.
    """
    text = messages_or_text
    if not isinstance(text, str):
        text = processor.apply_chat_template(text, add_generation_prompt=True, tokenize=False)
    pad = processor.tokenizer.image_token
    if text.count(pad) != 1:
        raise ValueError(f"expected exactly one {pad} in the prompt, got {text.count(pad)}")
    return text.replace(pad, f"{image_id(0)}{MEDIA_MARKER}")
