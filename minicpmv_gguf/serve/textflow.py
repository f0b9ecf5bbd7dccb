"""Stop strings on streamed reply text: the filter holds back only what the next piece could still change,
so the streamed text joined equals the text a non-streamed reply gets from the whole at once.
"""

from __future__ import annotations


def _held_prefix(text: str, needles: tuple[str, ...]) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of one of `needles`."""
    best = 0
    for needle in needles:
        for n in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:n]):
                best = n
                break
    return best


class StopFilter:
    """Cuts the text at the first stop string (which is not emitted); `stopped` once one was seen."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending, self.stopped = "", False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.pending + piece
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        keep = _held_prefix(text, self.stops)
        self.pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out
