"""The LM GGUF in llama.cpp: weights and vocabulary (tokenize, pieces, end-of-generation, metadata).

A `LanguageModel` owns the llama_model; the contexts and libmtmd contexts made on it borrow it
(`lend`) and are closed by its `close()` before the weights are freed, so none outlives them. A
lock makes `close()` wait for a vocabulary call running on another thread.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError
from .lib import alive, llama_cpp
from .log import capture_log, failure_reason

if TYPE_CHECKING:
    from ..runtime.headers import LMHeader

_PIECE_BYTES = 64
_META_BYTES = 256


class LanguageModel:
    """The LM GGUF of `header` (the runtime's checked header) loaded by llama.cpp for CPU inference;
    `mmap`: memory-map the file instead of reading it into memory. `close()` frees it."""

    def __init__(self, header: LMHeader, *, mmap: bool = False) -> None:
        L = llama_cpp()
        self.header = header
        self._load(Path(header.path), L.LLAMA_LOAD_MODE_MMAP if mmap else L.LLAMA_LOAD_MODE_NONE)

    @classmethod
    def from_file(cls, path: Path) -> LanguageModel:
        """Any LM GGUF, its header unchecked (`header` is None), loaded the way llama.cpp chooses."""
        lm = cls.__new__(cls)
        lm.header = None
        lm._load(Path(path), llama_cpp().LLAMA_LOAD_MODE_AUTO)
        return lm

    def _load(self, path: Path, load_mode: int) -> None:
        L = llama_cpp()
        self.path, self._lock, self._model, self._vocab = path, threading.RLock(), None, None
        self.loras: list[tuple[object, float]] = []  # (llama_adapter_lora pointer, scale): every new context uses them
        self._borrowers: weakref.WeakSet = weakref.WeakSet()
        params = L.llama_model_default_params()
        params.n_gpu_layers, params.load_mode = 0, load_mode
        with capture_log() as lines:
            self._model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"{path}: llama.cpp cannot load it: {failure_reason(lines)}")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.n_embd = L.llama_model_n_embd(self._model)

    def add_lora(self, path: Path, scale: float = 1.0) -> None:
        """Load a llama.cpp LoRA adapter GGUF for this model; contexts made afterwards apply it at `scale`.

        llama.cpp frees the adapter with the model, so it is never freed here.
        Raises:
            ModelLoadError: llama.cpp refuses the file (not an adapter, another architecture, shapes).
        """
        L = llama_cpp()
        with self._lock, capture_log() as lines:
            adapter = L.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            raise ModelLoadError(f"{path}: llama.cpp cannot load it as a LoRA adapter: {failure_reason(lines)}")
        self.loras.append((adapter, float(scale)))

    @property
    def model(self):
        """The llama_model pointer (ClosedError after close)."""
        return alive(self._model, f"{self.path}: the LM")

    @property
    def vocab(self):
        return alive(self._vocab, f"{self.path}: the LM")

    @contextmanager
    def lend(self, borrower):
        """The model pointer, for making `borrower` on it; `borrower.close()` runs before the weights go."""
        with self._lock:
            model = self.model
            self._borrowers.add(borrower)
            yield model

    def close(self) -> None:
        """Free the weights, after closing every context made on them; a second call does nothing."""
        with self._lock:
            for borrower in list(self._borrowers):
                borrower.close()
            if self._model:
                llama_cpp().llama_model_free(self._model)
            self._model = self._vocab = None

    def __enter__(self) -> LanguageModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`, no BOS; with `special`, special-token text (`<|im_start|>`, `<image_id>`)
        is read as those tokens, else as plain text."""
        L = llama_cpp()
        data = text.encode("utf-8")
        capacity = len(data) + 8  # byte-level BPE: never more tokens than bytes
        with self._lock:
            vocab = self.vocab
            ids = (L.llama_token * capacity)()
            n = L.llama_tokenize(vocab, data, len(data), ids, capacity, False, special)
            if n < 0:  # -n is the count it needs
                capacity = -n
                ids = (L.llama_token * capacity)()
                n = L.llama_tokenize(vocab, data, len(data), ids, capacity, False, special)
        assert n >= 0, (n, capacity)
        return list(ids[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens such as `<|im_end|>` give b"")."""
        L = llama_cpp()
        buf = ctypes.create_string_buffer(_PIECE_BYTES)
        with self._lock:
            n = L.llama_token_to_piece(self.vocab, token, buf, _PIECE_BYTES, 0, False)
            if n < 0:  # -n is the size it needs
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        """End of generation: `<|im_end|>`, `<|endoftext|>` and the other tokens llama.cpp marks EOG."""
        with self._lock:
            return bool(llama_cpp().llama_vocab_is_eog(self.vocab, token))

    def bos(self) -> int | None:
        """The token llama.cpp puts first in a sequence, if this vocabulary adds one."""
        L = llama_cpp()
        with self._lock:
            return L.llama_vocab_bos(self.vocab) if L.llama_vocab_get_add_bos(self.vocab) else None

    def token_texts(self) -> list[bytes]:
        """The stored text of every token, by id."""
        L = llama_cpp()
        with self._lock:
            vocab = self.vocab
            return [L.llama_vocab_get_text(vocab, i) for i in range(self.n_vocab)]

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp prints it (numbers as text), or None without that key."""
        L = llama_cpp()
        size = _META_BYTES
        with self._lock:
            while True:
                buf = ctypes.create_string_buffer(size)
                n = L.llama_model_meta_val_str(self.model, key.encode(), buf, size)
                if n < size:
                    break
                size = n + 1  # n is the full length, as snprintf's
        return buf.value.decode("utf-8", "replace") if n >= 0 else None
