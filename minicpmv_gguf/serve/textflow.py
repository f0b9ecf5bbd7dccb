"""Streamed reply text, piece by piece: stop strings, reasoning vs answer, and trimming, all incremental.

Each filter holds back only what the next piece could still change, so the streamed text joined equals
the text a non-streamed reply gets from the whole at once.
"""

from __future__ import annotations

THINK_END = "</think>"


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


class Trim:
    """Leading whitespace dropped, trailing whitespace held until more text follows (str.strip, streamed)."""

    def __init__(self) -> None:
        self.started, self.spaces = False, ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.spaces += text
            return ""
        out = self.spaces + body
        self.spaces = text[len(body) :]
        return out


class ThinkSplit:
    """Routes text to ("reasoning", ...) before `</think>` and ("content", ...) after it, both trimmed.

    Thinking mode only: the generation prompt opens `<think>`, so a reply is reasoning until `</think>`.
    Without thinking everything is content.
    """

    def __init__(self, thinking: bool) -> None:
        self.in_reasoning, self.pending = thinking, ""
        self.trims = {"reasoning": Trim(), "content": Trim()}

    def _out(self, kind: str, text: str) -> list[tuple[str, str]]:
        text = self.trims[kind].feed(text)
        return [(kind, text)] if text else []

    def feed(self, piece: str) -> list[tuple[str, str]]:
        if not self.in_reasoning:
            return self._out("content", piece)
        text = self.pending + piece
        if THINK_END in text:
            before, after = text.split(THINK_END, 1)
            self.in_reasoning, self.pending = False, ""
            return self._out("reasoning", before) + self._out("content", after)
        keep = _held_prefix(text, (THINK_END,))
        self.pending = text[len(text) - keep :] if keep else ""
        return self._out("reasoning", text[: len(text) - keep])

    def finish(self) -> list[tuple[str, str]]:
        out, self.pending = self.pending, ""
        return self._out("reasoning" if self.in_reasoning else "content", out) if out else []
