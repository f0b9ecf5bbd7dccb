"""llama.cpp's sampler chain: the next token from a context's last logits."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..spec import REPEAT_PENALTY, TEMPERATURE, TOP_K, TOP_P
from .context import Context
from .lib import alive, llama_cpp


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


class Sampler:
    """A llama.cpp sampler chain for one reply (the stages `sampling` describes), primed with the prompt's
    text tokens for the repeat penalty; `close()` frees it (a second call does nothing)."""

    def __init__(
        self, sampling: Sampling, prompt_tokens: list[int], n_vocab: int, *, grammar: str | None = None, lm=None
    ) -> None:
        L = llama_cpp()
        s = sampling
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        stages = []
        if grammar is not None:  # first, so that every later stage sees only what the grammar allows
            stage = L.llama_sampler_init_grammar(lm.vocab, grammar.encode(), b"root")
            if not stage:
                L.llama_sampler_free(self.chain)
                raise InputError("llama.cpp could not parse the grammar for response_format")
            stages.append(stage)
        if s.repeat_penalty != 1.0 and s.repeat_last_n > 0:
            penalties = L.llama_sampler_init_penalties(n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0)
            for token in prompt_tokens[-s.repeat_last_n :]:  # primed alone: a grammar must not see the prompt
                L.llama_sampler_accept(penalties, token)
            stages.append(penalties)
        if s.greedy:
            stages.append(L.llama_sampler_init_greedy())
        else:
            stages += [L.llama_sampler_init_top_k(s.top_k)] if s.top_k > 0 else []
            stages += [L.llama_sampler_init_top_p(s.top_p, 1)] if s.top_p < 1 else []
            stages += [L.llama_sampler_init_min_p(s.min_p, 1)] if s.min_p > 0 else []
            seed = L.LLAMA_DEFAULT_SEED if s.seed is None else s.seed
            stages += [L.llama_sampler_init_temp(s.temperature), L.llama_sampler_init_dist(seed)]
        for stage in stages:
            L.llama_sampler_chain_add(self.chain, stage)  # the chain owns and frees its stages

    def sample(self, context: Context) -> int:
        """The next token from the last logits of `context` (the chain also records it for the penalty)."""
        chain = alive(self.chain, "the sampler")
        with context.locked() as ctx:
            return llama_cpp().llama_sampler_sample(chain, ctx, -1)

    def close(self) -> None:
        if self.chain:
            llama_cpp().llama_sampler_free(self.chain)
        self.chain = None
