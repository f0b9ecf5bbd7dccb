"""Build progress: the events `build` reports, and a stderr renderer with an estimate of the time left.

The library only calls a callback with StageEvent; the CLI renders them with StageProgress. On a
terminal one line per stage is redrawn in place; elsewhere (logs, CI) a line is written per quarter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from .result import StageReport

Kind = Literal["start", "advance", "skip", "finish"]


@dataclass(frozen=True)
class StageEvent:
    """One step of one stage: started, advanced (done of total work units, mostly bytes), skipped, finished."""

    index: int  # 1-based
    count: int
    name: str
    kind: Kind
    detail: str = ""
    done: int = 0
    total: int = 0
    seconds: float = 0.0


Progress = Callable[[StageEvent], None]


class StageProgress:
    """Renders StageEvents on a text stream: `[2/5] quantize Q4_K_M  45%  ETA 0:07`."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, min_interval: float = 0.1) -> None:
        self.stream, self.min_interval = stream, min_interval
        self.tty = stream.isatty() if tty is None else tty
        self._t0 = self._last = 0.0
        self._quarter = 0

    def __call__(self, e: StageEvent) -> None:
        head = f"[{e.index}/{e.count}] {e.name}"
        if e.kind == "start":
            self._t0, self._last, self._quarter = time.monotonic(), 0.0, 0
            self._write(f"{head}{': ' + e.detail if e.detail else ''}", final=not self.tty)
        elif e.kind == "advance":
            self._advance(head, e)
        elif e.kind == "skip":
            self._write(f"{head}: skipped ({e.detail})", final=True)
        else:
            self._write(
                f"{head}: done in {_clock(e.seconds, precise=True)}{' (' + e.detail + ')' if e.detail else ''}",
                final=True,
            )

    def _advance(self, head: str, e: StageEvent) -> None:
        now = time.monotonic()
        fraction = min(e.done / e.total, 1.0) if e.total > 0 else 0.0
        if self.tty:
            if now - self._last < self.min_interval and fraction < 1.0:
                return
            self._last = now
            bar = "#" * int(fraction * 24)
            self._write(f"{head}  [{bar:<24}] {fraction:4.0%}  ETA {eta(now - self._t0, fraction)}", final=False)
        elif int(fraction * 4) > self._quarter and fraction < 1.0:
            self._quarter = int(fraction * 4)
            self._write(f"{head}  {fraction:4.0%}  ETA {eta(now - self._t0, fraction)}", final=True)

    def _write(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{text}{chr(10) if final else ''}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def eta(elapsed: float, fraction: float) -> str:
    """Time left at the rate so far; '--:--' until there is a rate to go by."""
    if fraction <= 0.0 or elapsed < 0.2:
        return "--:--"
    return _clock(elapsed * (1.0 - fraction) / fraction)


def _clock(seconds: float, *, precise: bool = False) -> str:
    if precise and seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class StageLog:
    """Sends one build's StageEvents and keeps its StageReports."""

    def __init__(self, stages: list[str], emit: Progress) -> None:
        self.stages, self.emit = stages, emit
        self.reports: list[StageReport] = []
        self._t0: dict[str, float] = {}

    def _event(self, key: str, kind: Kind, detail: str = "", **kw) -> None:
        self.emit(StageEvent(self.stages.index(key) + 1, len(self.stages), key, kind, detail, **kw))

    def start(self, key: str, detail: str) -> None:
        self._t0[key] = time.perf_counter()
        self._event(key, "start", detail)

    def advance(self, key: str, done: int, total: int) -> None:
        self._event(key, "advance", done=done, total=total)

    def counter(self, key: str, total: int, start: int = 0) -> Callable[..., None]:
        """A progress callback that adds its first argument (bytes) to a running count out of `total`."""
        done = start

        def step(n: int, *_ignored) -> None:
            nonlocal done
            done += n
            self.advance(key, done, total)

        return step

    def skip(self, key: str, detail: str, status: str = "skipped") -> None:
        self._event(key, "skip", detail)
        self.reports.append(StageReport(key, status, 0.0, detail))

    def finish(self, key: str, detail: str) -> float:
        seconds = time.perf_counter() - self._t0[key]
        self._event(key, "finish", detail, seconds=seconds)
        self.reports.append(StageReport(key, "ran", seconds, detail))
        return seconds
