"""Choosing each reply token with llama.cpp's sampler chain, and turning tokens back into text."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from ..errors import InputError
from ..native import LanguageModel, Sampler  # noqa: F401 - Sampler: chat.py imports it from here
from ..spec import REPEAT_PENALTY, TEMPERATURE, TOP_K, TOP_P


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; temperature 0 means greedy (always the most likely token).

    The defaults are OpenBMB's recommendation for MiniCPM-V 4.6 (its llama.cpp guide and
    generation_config; `spec.py`). The chain runs
    in llama.cpp's order: repeat penalty over the last `repeat_last_n` tokens (prompt text included),
    top-k, top-p, min-p, temperature, then a draw seeded by `seed` (None: a random seed). With the
    same seed, inputs and threads a reply is reproducible.
    """

    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    top_k: int = TOP_K
    repeat_penalty: float = REPEAT_PENALTY
    repeat_last_n: int = 64
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 turns it off)"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0 (1 turns it off)"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.seed is None or 0 <= self.seed < 2**32 - 1, "seed must be in [0, 2^32 - 2]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{message}, got {self!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0)


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
