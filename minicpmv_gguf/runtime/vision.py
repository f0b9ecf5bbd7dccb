"""libmtmd over one mmproj GGUF: image preprocessing (resize and slicing), encoding, and decoding into the LM.

Images arrive as raw RGB arrays through `mtmd_bitmap_init`, so no codec sits between the caller's pixels
and the vision encoder. Every ctypes object is owned by one Python object and freed by its `close()`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ModelLoadError
from .headers import MmprojHeader
from .llm import Context, LanguageModel
from .native import last_native_error, route_native_logs

MEDIA_MARKER = "<__media__>"  # mtmd_default_marker(): mtmd_tokenize puts one image's chunks in its place


def rgb_bitmap(rgb: np.ndarray):
    """An mtmd bitmap holding a copy of `rgb` (uint8 [height, width, 3]); free it with mtmd_bitmap_free."""
    import llama_cpp.mtmd_cpp as mtmd

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    assert rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
    return mtmd.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], data)


def is_image_chunk(chunk) -> bool:
    import llama_cpp.mtmd_cpp as mtmd

    return mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE


def chunk_text_tokens(chunk) -> list[int]:
    """The token ids of a text chunk."""
    import llama_cpp.mtmd_cpp as mtmd

    n = ctypes.c_size_t()
    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    return [ptr[i] for i in range(n.value)]


@dataclass(frozen=True)
class ImagePart:
    """One image chunk (the overview or one slice): `n_tokens` embeddings at `n_pos` decoder positions."""

    chunk: object
    n_tokens: int
    n_pos: int


class MediaChunks:
    """What libmtmd made of one image, in prompt order: framing token lists (`<image>`, `</image>`,
    `<slice>`, ...) and ImageParts. Owns the chunks; `close()` frees them."""

    def __init__(self, handle, parts: list[list[int] | ImagePart]) -> None:
        self.handle, self.parts = handle, parts

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        if self.handle:
            mtmd.mtmd_input_chunks_free(self.handle)
        self.handle, self.parts = None, []


class Vision:
    """A libmtmd context: the mmproj loaded next to `lm`, `threads` CPU threads; `close()` frees it."""

    def __init__(self, header: MmprojHeader, lm: LanguageModel, *, threads: int) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        route_native_logs()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = False, threads, False
        params.warmup = False  # the compute buffer is sized on the first image instead of a dummy one
        self.header, self.lm = header, lm
        self.ctx = mtmd.mtmd_init_from_file(str(header.path).encode(), lm.model, params)
        if not self.ctx:
            raise ModelLoadError(f"{header.path}: libmtmd cannot load the mmproj: {last_native_error()}")
        self.n_embd = lm.header.n_embd

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        if self.ctx:
            mtmd.mtmd_free(self.ctx)
        self.ctx = None

    def tokenize(self, rgb: np.ndarray) -> MediaChunks:
        """Preprocess one image (mtmd's resize and slicing) into its chunks; nothing is encoded yet."""
        import llama_cpp.mtmd_cpp as mtmd

        bitmap = rgb_bitmap(rgb)
        handle = mtmd.mtmd_input_chunks_init()
        try:
            text = MEDIA_MARKER.encode()
            inp = mtmd.mtmd_input_text()
            inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
            rc = mtmd.mtmd_tokenize(self.ctx, handle, ctypes.byref(inp), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)  # the chunks keep their own preprocessed copy
        media = MediaChunks(handle, [])
        if rc != 0:
            media.close()
            raise InputError(
                f"libmtmd could not preprocess a {rgb.shape[1]}x{rgb.shape[0]} image (code {rc}): {last_native_error()}"
            )
        for i in range(mtmd.mtmd_input_chunks_size(handle)):
            chunk = mtmd.mtmd_input_chunks_get(handle, i)
            if is_image_chunk(chunk):
                part = ImagePart(
                    chunk, mtmd.mtmd_input_chunk_get_n_tokens(chunk), mtmd.mtmd_input_chunk_get_n_pos(chunk)
                )
                media.parts.append(part)
            else:
                media.parts.append(chunk_text_tokens(chunk))
        return media

    def encode(self, part: ImagePart) -> np.ndarray:
        """The embeddings float32 [n_tokens, n_embd] of one image chunk (a copy: libmtmd reuses its buffer)."""
        import llama_cpp.mtmd_cpp as mtmd

        if mtmd.mtmd_encode_chunk(self.ctx, part.chunk) != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed: {last_native_error()}")
        ptr = mtmd.mtmd_get_output_embd(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(part.n_tokens * self.n_embd,)).reshape(part.n_tokens, -1).copy()

    def decode(self, context: Context, part: ImagePart, embd: np.ndarray, pos0: int) -> None:
        """Evaluate encoded embeddings in the LM at positions from pos0 (mtmd assigns the image positions)."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        embd = np.ascontiguousarray(embd, dtype=np.float32)
        new_n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self.ctx,
            context.ctx,
            part.chunk,
            embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            pos0,
            0,
            context.n_batch,
            ctypes.byref(new_n_past),
            mtmd.mtmd_helper_post_decode_callback(),
            None,
        )
        context.check_decode(rc)
        assert new_n_past.value == pos0 + part.n_pos, (new_n_past.value, pos0, part.n_pos)
