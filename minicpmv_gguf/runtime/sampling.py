"""Choosing each reply token with llama.cpp's sampler chain, and turning tokens back into text."""

from __future__ import annotations

import codecs

from ..native import LanguageModel
from ..native.sampler import GREEDY, Sampler, Sampling

__all__ = ["GREEDY", "Sampler", "Sampling", "TextStream"]


class TextStream:
    """Token bytes in, text out: a character split over two tokens is held back until complete."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm, self._decoder, self.raw = lm, codecs.getincrementaldecoder("utf-8")("replace"), bytearray()

    def push(self, token: int) -> str:
        piece = self.lm.piece(token)
        self.raw += piece
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """What is held back at the end: an incomplete character becomes U+FFFD, as `text()` writes it."""
        return self._decoder.decode(b"", final=True)

    def text(self) -> str:
        """Everything pushed so far, as text."""
        return self.raw.decode("utf-8", "replace")
