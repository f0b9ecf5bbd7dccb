"""What a chat turn returns: the reply, its token counts and timings."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timings:
    """Token counts and seconds of one turn. prompt = text + image tokens; total = encode + prefill + decode."""

    prompt_tokens: int  # positions the prompt fills: the whole conversation, text and image embeddings
    image_tokens: int  # of which image embeddings (every image and video frame in the conversation)
    cached_tokens: int  # prompt positions kept from the previous turn, not evaluated again
    generated_tokens: int  # reply tokens (the end-of-turn token is not counted)
    images_encoded: int  # images and video frames encoded this turn
    encode_s: float  # libmtmd: loading the mmproj if needed, preprocessing and encoding images
    prefill_s: float  # rendering and tokenizing the prompt, evaluating its new positions in the LM
    decode_s: float  # sampling and evaluating the reply tokens
    first_token_s: float  # from the start of the turn to the first reply token
    total_s: float  # time spent in the turn (the caller's time between streamed pieces excluded)

    @property
    def text_tokens(self) -> int:
        return self.prompt_tokens - self.image_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "text_tokens": self.text_tokens,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }

    def summary(self) -> str:
        return (
            f"{self.prompt_tokens} prompt tokens ({self.image_tokens} image, {self.cached_tokens} cached), "
            f"{self.generated_tokens} generated; encode {self.encode_s:.2f} s, prefill {self.prefill_s:.2f} s "
            f"({self.prefill_tokens_per_s:.0f} tok/s), decode {self.decode_s:.2f} s "
            f"({self.decode_tokens_per_s:.1f} tok/s)"
        )


@dataclass(frozen=True)
class Reply:
    """One assistant reply. stop_reason: "eos", "max_tokens", "context" (full) or "interrupted"."""

    text: str  # the answer (thinking mode: after </think>)
    reasoning: str | None  # thinking mode: the text before </think>
    token_ids: tuple[int, ...]
    stop_reason: str
    timings: Timings


class Clock:
    """Splits a turn's wall time into phases; the phases add up to the total by construction."""

    def __init__(self) -> None:
        self.spent = {"encode": 0.0, "prefill": 0.0, "decode": 0.0}
        self.phase: str | None = None
        self.mark = time.perf_counter()

    def switch(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self.phase:
            self.spent[self.phase] += now - self.mark
        self.phase, self.mark = phase, now

    def elapsed(self) -> float:
        running = time.perf_counter() - self.mark if self.phase else 0.0
        return sum(self.spent.values()) + running


def split_reasoning(raw: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a reply's text: thinking mode writes the reasoning, then `</think>`, then the
    answer (its `<think>` is in the prompt); without `</think>` it is all answer."""
    if "</think>" not in raw:
        return None, raw.strip()
    reasoning, answer = raw.split("</think>", 1)
    return reasoning.replace("<think>", "", 1).strip(), answer.strip()
