"""libmtmd over one mmproj GGUF: image preprocessing (resize and slicing), encoding, and decoding into the LM.

Images arrive as raw RGB arrays through `mtmd_bitmap_init`, so no codec sits between the caller's pixels
and the vision encoder. Every ctypes object is owned by one Python object and freed by its `close()`;
a `Vision` made on a LanguageModel is closed by the model's `close()` too.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, ModelLoadError
from .context import Context
from .lib import alive, llama_cpp, mtmd
from .log import capture_log, failure_reason
from .model import LanguageModel

if TYPE_CHECKING:
    from ..runtime.headers import MmprojHeader

MEDIA_MARKER = "<__media__>"  # mtmd_default_marker(): mtmd_tokenize puts one image's chunks in its place


class MediaChunks:
    """What libmtmd made of one image, in prompt order: framing token lists (`<image>`, `</image>`,
    `<slice>`, ...) and ImageParts. Owns the chunks; `close()` frees them (a second call does nothing)."""

    def __init__(self, handle, parts: list[list[int] | ImagePart]) -> None:
        self.handle, self.parts = handle, parts
        self._lock = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[object]:
        """The chunks' handle, not freed until the block ends (ClosedError after close)."""
        with self._lock:
            yield alive(self.handle, "the image's chunks")

    def close(self) -> None:
        with self._lock:
            if self.handle:
                mtmd().mtmd_input_chunks_free(self.handle)
            self.handle, self.parts = None, []


@dataclass(frozen=True)
class ImagePart:
    """One image chunk (the overview or one slice): `n_tokens` embeddings at `n_pos` decoder positions."""

    chunk: object
    n_tokens: int
    n_pos: int
    media: MediaChunks | None = field(default=None, compare=False, repr=False)  # the owner of `chunk`

    def held(self):
        """A context manager over the chunk pointer, its MediaChunks kept open meanwhile."""
        return _chunk_of(self) if self.media is not None else nullcontext(self.chunk)


@contextmanager
def _chunk_of(part: ImagePart) -> Iterator[object]:
    with part.media.locked():
        yield part.chunk


class Vision:
    """A libmtmd context: the mmproj loaded next to `lm`, `threads` CPU threads; `close()` frees it."""

    def __init__(self, header: MmprojHeader, lm: LanguageModel, *, threads: int) -> None:
        self.header, self.lm = header, lm
        self._lock, self._ctx = threading.RLock(), None
        with lm.lend(self) as model:
            self._open(Path(header.path), model, lm.n_embd, threads)

    @classmethod
    def beside(cls, path: Path, llama, *, threads: int) -> Vision:
        """The mmproj at `path` next to a llama-cpp-python `Llama` (the reference side of verify); the
        Llama must stay open until this is closed."""
        vision = cls.__new__(cls)
        vision.header, vision.lm = None, None
        vision._lock, vision._ctx = threading.RLock(), None
        vision._open(Path(path), llama.model, llama.n_embd(), threads)
        return vision

    def _open(self, path: Path, model, n_embd: int, threads: int) -> None:
        M = mtmd()
        params = M.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = False, threads, False
        params.warmup = False  # the compute buffer is sized on the first image instead of a dummy one
        with capture_log() as lines:
            self._ctx = M.mtmd_init_from_file(str(path).encode(), model, params)
        if not self._ctx:
            raise ModelLoadError(f"{path}: libmtmd cannot load the mmproj: {failure_reason(lines)}")
        self.path, self.n_embd = path, n_embd

    @property
    def ctx(self):
        """The mtmd_context pointer (ClosedError after close)."""
        return alive(self._ctx, "the mmproj")

    @contextmanager
    def _locked(self) -> Iterator[object]:
        with self._lock:
            yield self.ctx

    def close(self) -> None:
        """Free the mmproj; a second call does nothing."""
        with self._lock:
            if self._ctx:
                mtmd().mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Vision:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, rgb: np.ndarray, text: str = MEDIA_MARKER) -> MediaChunks:
        """Preprocess one image (mtmd's resize and slicing) into its chunks; nothing is encoded yet.

        `text` holds one MEDIA_MARKER where the image goes; its other text becomes token lists.
        """
        M = mtmd()
        raw = text.encode()
        inp = M.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), False, True
        with self._locked() as ctx:
            bitmap = _rgb_bitmap(rgb)
            media = MediaChunks(M.mtmd_input_chunks_init(), [])
            try:
                with capture_log() as lines:
                    rc = M.mtmd_tokenize(ctx, media.handle, ctypes.byref(inp), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
            finally:
                M.mtmd_bitmap_free(bitmap)  # the chunks keep their own preprocessed copy
        if rc != 0:
            media.close()
            raise InputError(
                f"libmtmd could not preprocess a {rgb.shape[1]}x{rgb.shape[0]} image (code {rc}): "
                f"{failure_reason(lines)}"
            )
        for i in range(M.mtmd_input_chunks_size(media.handle)):
            chunk = M.mtmd_input_chunks_get(media.handle, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n_tokens, n_pos = M.mtmd_input_chunk_get_n_tokens(chunk), M.mtmd_input_chunk_get_n_pos(chunk)
                media.parts.append(ImagePart(chunk, n_tokens, n_pos, media))
            else:
                media.parts.append(_text_tokens(chunk))
        return media

    def encode(self, part: ImagePart) -> np.ndarray:
        """The embeddings float32 [n_tokens, n_embd] of one image chunk (a copy: libmtmd reuses its buffer)."""
        M = mtmd()
        with self._locked() as ctx, part.held() as chunk, capture_log() as lines:
            if M.mtmd_encode_chunk(ctx, chunk) != 0:
                raise RuntimeError(f"mtmd_encode_chunk failed: {failure_reason(lines)}")
            ptr = M.mtmd_get_output_embd(ctx)
            return np.ctypeslib.as_array(ptr, shape=(part.n_tokens * self.n_embd,)).reshape(part.n_tokens, -1).copy()

    def decode(self, context: Context, part: ImagePart, embd: np.ndarray, pos0: int) -> None:
        """Evaluate encoded embeddings in the LM at positions from pos0 (mtmd assigns the image positions)."""
        M = mtmd()
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        new_n_past = llama_cpp().llama_pos(0)
        with self._locked() as ctx, part.held() as chunk, context.locked() as lctx, capture_log() as lines:
            rc = M.mtmd_helper_decode_image_chunk(
                ctx,
                lctx,
                chunk,
                embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                pos0,
                0,
                context.n_batch,
                ctypes.byref(new_n_past),
                M.mtmd_helper_post_decode_callback(),
                None,
            )
        context.check_decode(rc, lines)
        assert new_n_past.value == pos0 + part.n_pos, (new_n_past.value, pos0, part.n_pos)

    def eval_chunk(self, llama_ctx, part: ImagePart, n_past: int, n_batch: int) -> int:
        """Encode one image chunk and evaluate it in a llama_context pointer made elsewhere (a Llama's) at
        positions from n_past, logits for the last; returns the next free position."""
        M = mtmd()
        new_n_past = llama_cpp().llama_pos(0)
        with self._locked() as ctx, part.held() as chunk, capture_log() as lines:
            rc = M.mtmd_helper_eval_chunk_single(
                ctx, llama_ctx, chunk, n_past, 0, n_batch, True, ctypes.byref(new_n_past)
            )
        if rc != 0:
            raise RuntimeError(f"mtmd_helper_eval_chunk_single returned {rc}: {failure_reason(lines)}")
        return new_n_past.value


def _rgb_bitmap(rgb: np.ndarray):
    """An mtmd bitmap holding a copy of `rgb` (uint8 [height, width, 3]); free it with mtmd_bitmap_free."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    assert rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
    return mtmd().mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], data)


def _text_tokens(chunk) -> list[int]:
    """The token ids of a text chunk."""
    n = ctypes.c_size_t()
    ptr = mtmd().mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    return [ptr[i] for i in range(n.value)]
