"""One llama.cpp context on a LanguageModel: the memory of sequence 0, decoding, logits, saved states.

The memory holds the KV cache of the attention layers and the recurrent state of the Gated-DeltaNet
layers. `save_state()` / `restore_state()` copy both (a prefix cache can put a sequence back in this
or another context of the same model); `save_recurrent()` / `restore_recurrent()` copy the recurrent
part alone, to roll a turn back. A context is one sequence and not for concurrent use: its lock
makes calls from two threads (and `close()`) wait for each other instead of corrupting it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ..errors import InputError, ModelLoadError
from .lib import alive, llama_cpp
from .log import capture_log, failure_reason
from .model import LanguageModel

_MROPE_SECTIONS = 4  # GGML_MROPE_SECTIONS: llama.cpp reads this many position sections from embedding batches


class Context:
    """One llama.cpp context on `lm`: sequence 0 of `n_ctx` positions, fed `n_batch` tokens at a time.

    `n_ubatch`: tokens per compute step (default `n_batch`). `cb_eval(tensor, ask, user_data)`:
    ggml's eval callback, called for the graph's nodes during each decode.
    """

    def __init__(
        self,
        lm: LanguageModel,
        *,
        n_ctx: int,
        n_batch: int,
        threads: int,
        n_ubatch: int | None = None,
        cb_eval: Callable[[int, bool, int], bool] | None = None,
    ) -> None:
        L = llama_cpp()
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_ubatch or n_batch, 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self._cb_eval = None
        if cb_eval is not None:
            self._cb_eval = L.ggml_backend_sched_eval_callback(cb_eval)  # must outlive the context
            params.cb_eval = self._cb_eval
        self.lm, self.n_batch = lm, n_batch
        self._lock = threading.RLock()
        self._ctx = self._batch = self._embd_batch = self._memory = None
        with lm.lend(self) as model, capture_log() as lines:  # lm.close() waits until this one is whole
            self._ctx = L.llama_init_from_model(model, params)
            if self._ctx:
                self.n_ctx = L.llama_n_ctx(self._ctx)
                self._batch = L.llama_batch_init(n_batch, 0, 1)
                self._memory = L.llama_get_memory(self._ctx)
        if not self._ctx:
            raise ModelLoadError(f"{lm.path}: llama.cpp cannot make a {n_ctx}-token context: {failure_reason(lines)}")
        if lm.loras:
            self._set_loras(lm.loras)

    def _set_loras(self, loras: list[tuple[object, float]]) -> None:
        """Apply the model's LoRA adapters to this context (llama_set_adapters_lora)."""
        L = llama_cpp()
        adapters = (L.llama_adapter_lora_p_ctypes * len(loras))(*(a for a, _ in loras))
        scales = (ctypes.c_float * len(loras))(*(s for _, s in loras))
        if L.llama_set_adapters_lora(self._ctx, adapters, len(loras), scales) != 0:
            self.close()
            raise ModelLoadError(f"{self.lm.path}: llama.cpp cannot apply the LoRA adapters to a context")

    @property
    def ctx(self):
        """The llama_context pointer (ClosedError after close); see `locked()` for use from threads."""
        return alive(self._ctx, f"{self.lm.path}: the context")

    @contextmanager
    def locked(self) -> Iterator[object]:
        """The llama_context pointer, with no other call on this context until the block ends."""
        with self._lock:
            yield self.ctx

    def close(self) -> None:
        """Free the context; a second call does nothing."""
        with self._lock:
            L = llama_cpp()
            for batch in (self._batch, self._embd_batch):
                if batch is not None:
                    L.llama_batch_free(batch)
            if self._ctx:
                L.llama_free(self._ctx)
            self._ctx = self._batch = self._embd_batch = self._memory = self._cb_eval = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def decode(self, tokens: list[int], pos0: int, *, logits_last: bool, logits_all: bool = False) -> None:
        """Evaluate `tokens` at positions pos0, pos0+1, ...; keep logits for the last one if asked, or
        (`logits_all`, at most n_batch tokens) for every one."""
        assert not logits_all or len(tokens) <= self.n_batch, (len(tokens), self.n_batch)
        L = llama_cpp()
        with self.locked() as ctx:
            b = self._batch
            for start in range(0, len(tokens), self.n_batch):
                part = tokens[start : start + self.n_batch]
                for i, tok in enumerate(part):
                    b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos0 + start + i, 1, logits_all
                    b.seq_id[i][0] = 0
                b.logits[len(part) - 1] = logits_all or (logits_last and start + len(part) == len(tokens))
                b.n_tokens = len(part)
                with capture_log() as lines:
                    rc = L.llama_decode(ctx, b)
                self.check_decode(rc, lines)

    def decode_embd(self, embd: np.ndarray, pos0: int) -> None:
        """Evaluate embeddings float32 [n, n_embd] at positions pos0, pos0+1, ... (causal, no logits): what
        libmtmd's decode helper does with an image chunk of this model, without needing the chunk."""
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        L = llama_cpp()
        with self.locked() as ctx:
            if self._embd_batch is None:
                self._embd_batch = L.llama_batch_init(self.n_batch, embd.shape[1], 1)
            b = self._embd_batch
            # An embedding batch carries M-RoPE positions section-major, pos[j * n + i], for up to four sections:
            # the position in every one gives libmtmd's logits bit for bit (tested); unset ones are garbage.
            step = self.n_batch // _MROPE_SECTIONS
            for start in range(0, len(embd), step):
                part = embd[start : start + step]
                n = len(part)
                ctypes.memmove(b.embd, part.ctypes.data, part.nbytes)
                for i in range(n):
                    b.pos[i], b.n_seq_id[i], b.logits[i] = pos0 + start + i, 1, False
                    b.seq_id[i][0] = 0
                for i in range(n, _MROPE_SECTIONS * n):
                    b.pos[i] = pos0 + start + i % n
                b.n_tokens = len(part)
                with capture_log() as lines:
                    rc = L.llama_decode(ctx, b)
                self.check_decode(rc, lines)

    def check_decode(self, rc: int, lines: list[str] | None = None) -> None:
        """Raise for a llama_decode return code (0 is success), with the reason from the call's log `lines`."""
        if rc == 1:  # no memory slot: the context is full
            raise InputError(
                f"the conversation no longer fits the {self.n_ctx}-token context; reset it or "
                "open the model with a larger n_ctx"
            )
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}: {failure_reason(lines or [])}")

    def logits(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, n_vocab]: a copy of the logits of the last batch's tokens start..stop-1."""
        with self.locked() as ctx:
            return np.stack([_logits_view(ctx, i, self.lm.n_vocab) for i in range(start, stop)])

    def clear(self) -> None:
        with self.locked():
            llama_cpp().llama_memory_clear(self._memory, True)

    def remove_from(self, pos: int) -> bool:
        """Forget positions >= pos; False when the recurrent state cannot go back that far (then nothing changed)."""
        with self.locked():
            return bool(llama_cpp().llama_memory_seq_rm(self._memory, 0, pos, -1))

    def save_state(self) -> bytes:
        """Everything sequence 0 holds (KV cache and recurrent state), for `restore_state` on this context or
        another one of the same model with room for it."""
        return self._save(llama_cpp().LLAMA_STATE_SEQ_FLAGS_NONE)

    def restore_state(self, state: bytes) -> bool:
        """Make sequence 0 what it was at `save_state()`; False if llama.cpp refused it (the memory is then
        cleared)."""
        return self._restore(state, llama_cpp().LLAMA_STATE_SEQ_FLAGS_NONE)

    def save_recurrent(self) -> bytes:
        """The recurrent (Gated-DeltaNet) state of sequence 0 alone: a fixed size, whatever the context length.

        Restoring it and then dropping the attention KV past the same position rolls the sequence back:
        llama-server's context checkpoints for hybrid models work the same way.
        """
        return self._save(llama_cpp().LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)

    def restore_recurrent(self, state: bytes) -> bool:
        """Put back a `save_recurrent()` state; False if llama.cpp refused it (the memory is then cleared)."""
        return self._restore(state, llama_cpp().LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)

    # The flag-less llama_state_seq_get_data / set_data are these with flags 0 (LLAMA_STATE_SEQ_FLAGS_NONE).
    def _save(self, flags: int) -> bytes:
        L = llama_cpp()
        with self.locked() as ctx:
            size = L.llama_state_seq_get_size_ext(ctx, 0, flags)
            buf = (ctypes.c_uint8 * size)()
            written = L.llama_state_seq_get_data_ext(ctx, buf, size, 0, flags)
        assert written == size, (written, size)
        return bytes(buf)

    def _restore(self, state: bytes, flags: int) -> bool:
        L = llama_cpp()
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        with self.locked() as ctx:
            if L.llama_state_seq_set_data_ext(ctx, buf, len(state), 0, flags) != len(state):
                self.clear()
                return False
        return True


def logits_row(ctx, i: int, n_vocab: int) -> np.ndarray:
    """A copy of the float32 logits of batch token `i` (-1: the last) of a llama_context pointer."""
    return _logits_view(ctx, i, n_vocab).copy()


def _logits_view(ctx, i: int, n_vocab: int) -> np.ndarray:
    """The logits of batch token `i` in llama.cpp's buffer (valid until the next decode)."""
    ptr = llama_cpp().llama_get_logits_ith(ctx, i)
    if not ptr:  # llama.cpp logs "invalid logits id" and returns NULL
        raise RuntimeError(f"llama.cpp has no logits for batch token {i}")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))
