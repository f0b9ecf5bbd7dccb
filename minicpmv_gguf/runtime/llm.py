"""The LM GGUF in llama.cpp (llama-cpp-python's low-level API): weights, tokenizer, and decoding contexts.

`LanguageModel` holds the weights and the vocabulary; each chat session makes its own
`Context`: the memory of one sequence (KV cache of the attention layers, recurrent state of the
Gated-DeltaNet layers), a token batch, and snapshots of the recurrent state to roll a turn back.
"""

from __future__ import annotations

import ctypes

from ..errors import InputError, ModelLoadError
from .headers import LMHeader
from .native import last_native_error, route_native_logs

_PIECE_BYTES = 64


class LanguageModel:
    """An LM GGUF loaded by llama.cpp for CPU inference; `close()` frees it."""

    def __init__(self, header: LMHeader, *, mmap: bool = False) -> None:
        import llama_cpp

        route_native_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        self.header = header
        self.model = llama_cpp.llama_model_load_from_file(str(header.path).encode(), params)
        if not self.model:
            raise ModelLoadError(f"{header.path}: llama.cpp cannot load it: {last_native_error()}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        import llama_cpp

        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.model = None

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text (`<|im_start|>`, `<image_id>`) read as those tokens; no BOS."""
        import llama_cpp

        data = text.encode("utf-8")
        capacity = len(data) + 8  # byte-level BPE: never more tokens than bytes
        ids = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, capacity, False, True)
        assert n >= 0, (n, capacity)
        return list(ids[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens such as `<|im_end|>` give b"")."""
        import llama_cpp

        buf = ctypes.create_string_buffer(_PIECE_BYTES)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, _PIECE_BYTES, 0, False)
        if n < 0:  # -n is the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        """End of generation: `<|im_end|>`, `<|endoftext|>` and the other tokens llama.cpp marks EOG."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


class Context:
    """One llama.cpp context on `lm`: sequence 0 of `n_ctx` positions, fed `n_batch` tokens at a time."""

    def __init__(self, lm: LanguageModel, *, n_ctx: int, n_batch: int, threads: int) -> None:
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.lm, self.n_batch, self.batch, self._embd_batch = lm, n_batch, None, None
        self.ctx = llama_cpp.llama_init_from_model(lm.model, params)
        if not self.ctx:
            raise ModelLoadError(
                f"{lm.header.path}: llama.cpp cannot make a {n_ctx}-token context: {last_native_error()}"
            )
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.memory = llama_cpp.llama_get_memory(self.ctx)

    def close(self) -> None:
        import llama_cpp

        for batch in (self.batch, self._embd_batch):
            if batch is not None:
                llama_cpp.llama_batch_free(batch)
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        self.batch, self._embd_batch, self.ctx = None, None, None

    def decode(self, tokens: list[int], pos0: int, *, logits_last: bool) -> None:
        """Evaluate `tokens` at positions pos0, pos0+1, ...; keep logits for the last one if asked."""
        import llama_cpp

        b = self.batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            for i, tok in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos0 + start + i, 1, False
                b.seq_id[i][0] = 0
            b.logits[len(part) - 1] = logits_last and start + len(part) == len(tokens)
            b.n_tokens = len(part)
            self.check_decode(llama_cpp.llama_decode(self.ctx, b))

    def check_decode(self, rc: int) -> None:
        """Raise for a llama_decode return code (0 is success)."""
        if rc == 1:  # no memory slot: the context is full
            raise InputError(
                f"the conversation no longer fits the {self.n_ctx}-token context; reset it or "
                "open the model with a larger n_ctx"
            )
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}: {last_native_error()}")

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)

    def remove_from(self, pos: int) -> bool:
        """Forget positions >= pos; False when the recurrent state cannot go back that far (then nothing changed)."""
        import llama_cpp

        return bool(llama_cpp.llama_memory_seq_rm(self.memory, 0, pos, -1))

    def save_recurrent(self) -> bytes:
        """The recurrent (Gated-DeltaNet) state of sequence 0 alone: a fixed size, whatever the context length.

        Restoring it and then dropping the attention KV past the same position rolls the sequence back:
        llama-server's context checkpoints for hybrid models work the same way.
        """
        import llama_cpp

        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        size = llama_cpp.llama_state_seq_get_size_ext(self.ctx, 0, flags)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data_ext(self.ctx, buf, size, 0, flags)
        assert written == size, (written, size)
        return bytes(buf)

    def restore_recurrent(self, state: bytes) -> bool:
        """Put back a `save_recurrent()` state; False if llama.cpp refused it (the memory is then cleared)."""
        import llama_cpp

        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        if llama_cpp.llama_state_seq_set_data_ext(self.ctx, buf, len(state), 0, flags) != len(state):
            self.clear()
            return False
        return True

    def save_state(self) -> bytes:
        """The whole state of sequence 0 (attention KV cache and recurrent state), to put back later."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, 0)
        assert written == size, (written, size)
        return bytes(buf)

    def restore_state(self, state: bytes) -> bool:
        """Put back a `save_state()` state in place of sequence 0; False if llama.cpp refused it (then cleared)."""
        import llama_cpp

        self.clear()
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(state), 0) != len(state):
            self.clear()
            return False
        return True

    def decode_embd(self, embd, pos0: int) -> None:
        """Evaluate embeddings float32 [n, n_embd] at positions pos0.. (causal, as libmtmd's helper does here)."""
        import llama_cpp
        import numpy as np

        embd = np.ascontiguousarray(embd, dtype=np.float32)
        n, width = embd.shape
        if self._embd_batch is None:
            self._embd_batch = llama_cpp.llama_batch_init(self.n_batch, width, 1)
        b = self._embd_batch
        for start in range(0, n, self.n_batch):
            part = embd[start : start + self.n_batch]
            ctypes.memmove(b.embd, part.ctypes.data, part.nbytes)
            for i in range(len(part)):
                b.pos[i], b.n_seq_id[i], b.logits[i] = pos0 + start + i, 1, False
                b.seq_id[i][0] = 0
            b.n_tokens = len(part)
            self.check_decode(llama_cpp.llama_decode(self.ctx, b))
