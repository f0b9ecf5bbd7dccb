"""The units a prompt is made of, in order: text runs and image spans, each filling decoder positions.

Each position has a key, used to find what a context already holds: the token id for text, and
(image content hash, chunk index, offset) for an image embedding. Equal pixels give equal keys, so an
image sent again is recognised whatever object carries it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

Key = int | tuple[str, int, int]


@dataclass(frozen=True)
class TextRun:
    """Token ids evaluated as text: the template's text, or libmtmd's framing (`<image>`, `<slice>`, ...)."""

    tokens: tuple[int, ...]

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def keys(self) -> tuple[Key, ...]:
        return self.tokens


@dataclass(frozen=True)
class ImageSpan:
    """One libmtmd image chunk (the overview or one slice): `n_tokens` embeddings at `n_pos` positions."""

    image: str  # the picture's content hash
    chunk: int  # the chunk's index in the picture's libmtmd chunks
    n_tokens: int
    n_pos: int

    def keys(self) -> tuple[Key, ...]:
        return tuple((self.image, self.chunk, j) for j in range(self.n_pos))


Unit = TextRun | ImageSpan


@dataclass(frozen=True)
class PictureLayout:
    """What libmtmd makes of one picture, in prompt order: framing text runs and image spans."""

    image: str
    units: tuple[Unit, ...]

    @property
    def image_positions(self) -> int:
        return sum(u.n_pos for u in self.units if isinstance(u, ImageSpan))


@dataclass(frozen=True)
class Prompt:
    """A whole prompt as units; `stable` is where the next turn's prompt will diverge (a snapshot point)."""

    units: tuple[Unit, ...]
    stable: int | None = None

    @cached_property
    def keys(self) -> tuple[Key, ...]:
        return tuple(k for u in self.units for k in u.keys())

    @property
    def n_pos(self) -> int:
        return len(self.keys)

    @cached_property
    def text_tokens(self) -> tuple[int, ...]:
        """Every text token, framing included, in order (what the repeat penalty sees)."""
        return tuple(t for u in self.units if isinstance(u, TextRun) for t in u.tokens)

    @property
    def image_positions(self) -> int:
        return sum(u.n_pos for u in self.units if isinstance(u, ImageSpan))

    def placed(self) -> Iterator[tuple[int, Unit]]:
        """(first position, unit) over the prompt."""
        pos = 0
        for unit in self.units:
            yield pos, unit
            pos += unit.n_pos


def picture_layout(image: str, parts: Sequence[list[int] | object]) -> PictureLayout:
    """A picture's units from libmtmd's parts: token lists (framing) and image chunks (n_tokens, n_pos)."""
    units = tuple(
        TextRun(tuple(p)) if isinstance(p, list) else ImageSpan(image, i, p.n_tokens, p.n_pos)
        for i, p in enumerate(parts)
    )
    return PictureLayout(image, units)
