"""The server's engine: one loaded LM, one context, and caches that let resent conversations skip their prefix.

A request is a whole conversation (chat clients resend it every turn). The engine renders it with the
GGUF's chat template, takes image embeddings from the cache (encoding only new images), restores the
longest snapshot whose positions start the prompt (or keeps the live context when it does), evaluates
the rest, saving snapshots after each image and where the next turn will diverge, then samples the
reply. One request runs at a time: `run` is not reentrant (the app serialises calls).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import InputError
from ..native import Context, LanguageModel, Vision
from ..runtime.chat import stable_point
from ..runtime.headers import MmprojHeader
from ..runtime.media import Picture
from ..runtime.prompt import ChatTemplate, Message, layout
from ..runtime.sampling import Sampler, Sampling, TextStream
from ..runtime.units import ImageSpan, Key, Prompt, TextRun, Unit, picture_layout
from .caches import ByteLRU, EncodedImage, StateCache
from .textflow import StopFilter

_WARM_BATCH = 32  # tokens evaluated between checks for a waiting request during spare-time work


@dataclass(frozen=True)
class Job:
    """What one request asks: messages as the chat template takes them (`{"type": "image"}` parts), their
    pictures in order, the mmproj mode, and how to sample."""

    messages: list[Message]
    pictures: tuple[Picture, ...]
    mode: str | None
    thinking: bool = False
    tools: list[dict] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    prefill: str = ""  # text the reply is made to start with (appended to the prompt, not generated)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # positions of the whole prompt, image embeddings included
    completion_tokens: int
    cached_tokens: int  # prompt positions restored from a snapshot or kept in the context
    image_tokens: int
    images_encoded: int
    encode_ms: float
    prompt_ms: float  # evaluating the prompt's new positions (encoding not included)
    decode_ms: float
    first_token_ms: float  # from the start of the request to the first reply token

    def timings(self) -> dict:
        """llama-server's `timings` object, plus the image fields."""
        prompt_n = self.prompt_tokens - self.cached_tokens
        return {
            "cache_n": self.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_second": prompt_n / self.prompt_ms * 1e3 if self.prompt_ms else 0.0,
            "predicted_n": self.completion_tokens,
            "predicted_ms": self.decode_ms,
            "predicted_per_second": self.completion_tokens / self.decode_ms * 1e3 if self.decode_ms else 0.0,
            "image_tokens": self.image_tokens,
            "images_encoded": self.images_encoded,
            "image_encode_ms": self.encode_ms,
            "first_token_ms": self.first_token_ms,
        }


@dataclass(frozen=True)
class Delta:
    text: str  # the reply's next text, stop strings cut (reasoning and tool calls are the app's to parse)


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop", "length" (max_tokens or the context is full) or "cancelled"
    usage: Usage


class Engine:
    """The LM, its mmproj files by mode (loaded on first use, then kept), one context, and the caches."""

    def __init__(
        self,
        lm: LanguageModel,
        mmprojs: dict[str, MmprojHeader],
        *,
        threads: int,
        n_ctx: int,
        n_batch: int = 512,
        image_cache_bytes: int = 64 << 20,
        state_cache_bytes: int = 256 << 20,
    ) -> None:
        self.lm, self.mmprojs, self.threads = lm, mmprojs, threads
        self.template = ChatTemplate(lm.header.chat_template)
        self.context = Context(lm, n_ctx=n_ctx, n_batch=n_batch, threads=threads)
        self.images = ByteLRU(image_cache_bytes)
        self.states = StateCache(state_cache_bytes)
        self.live: list[Key] = []  # what sequence 0 of the context holds now
        self._visions: dict[str, Vision] = {}
        self._lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    def close(self) -> None:
        for vision in self._visions.values():
            vision.close()
        self._visions.clear()
        self.context.close()

    def mmproj(self, mode: str | None) -> MmprojHeader:
        """The mmproj for a mode (None: 16x if loaded, else the only one)."""
        if mode is None:
            mode = "16x" if "16x" in self.mmprojs else next(iter(self.mmprojs), None)
        if mode not in self.mmprojs:
            raise InputError(f"no {mode} mmproj is loaded" if mode else "images need an mmproj; none is loaded")
        return self.mmprojs[mode]

    def encode(self, picture: Picture, mode: str | None) -> tuple[EncodedImage, bool]:
        """(the picture's units and embeddings, whether they were encoded now): from the cache, or encoded
        now and cached."""
        header = self.mmproj(mode)
        key = (header.mode, picture.digest)
        if (hit := self.images.get(key)) is not None:
            return hit, False
        t0 = time.perf_counter()
        vision = self._visions.get(header.mode)
        if vision is None:
            vision = self._visions[header.mode] = Vision(header, self.lm, threads=self.threads)
        media = vision.tokenize(picture.rgb)
        try:
            parts = media.parts
            embeddings = {i: vision.encode(p) for i, p in enumerate(parts) if not isinstance(p, list)}
            encoded = EncodedImage(picture_layout(picture.digest, parts), embeddings, time.perf_counter() - t0)
        finally:
            media.close()
        self.images.put(key, encoded, encoded.nbytes)
        return encoded, True

    def prompt(self, job: Job) -> tuple[Prompt, list[int], dict[str, EncodedImage], float, int]:
        """(the prompt, the positions right after each picture, its pictures by digest, encode s, encoded)."""
        rendered = self.template.render(job.messages, enable_thinking=job.thinking, tools=job.tools) + job.prefill
        units: list[Unit] = []
        image_ends, encoded, encode_s, n_encoded = [], {}, 0.0, 0
        for seg in layout(rendered, list(job.pictures), []):
            if isinstance(seg, str):
                units.append(TextRun(tuple(self.lm.tokenize(seg))))
                continue
            image, new = self.encode(seg, job.mode)
            encoded[seg.digest] = image
            if new:
                encode_s, n_encoded = encode_s + image.encode_s, n_encoded + 1
            units += image.layout.units
            image_ends.append(sum(u.n_pos for u in units))
        prompt = Prompt(tuple(units))
        shared = self.template.shared_prefix(job.messages, enable_thinking=job.thinking, tools=job.tools)
        prompt = Prompt(prompt.units, stable_point(rendered, shared, prompt, self.lm.tokenize))
        return prompt, image_ends, encoded, encode_s, n_encoded

    def run(self, job: Job, cancel: threading.Event | None = None) -> Iterator[Delta | Finish]:
        """Answer one request: Delta events as the reply is generated, then one Finish.

        Raises:
            InputError: the conversation does not fit the context, the template rejects it, or an image
                needs an mmproj that is not loaded. Raised before the first event.
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("Engine.run is already running; requests must be serialised")
        try:
            yield from self._run(job, cancel or threading.Event())
        finally:
            self._lock.release()

    def _run(self, job: Job, cancel: threading.Event) -> Iterator[Delta | Finish]:
        t0 = time.perf_counter()
        prompt, image_ends, encoded, encode_s, n_encoded = self.prompt(job)
        n = prompt.n_pos
        if n >= self.n_ctx:
            raise InputError(
                f"the prompt needs {n} tokens ({prompt.image_positions} for images) but the context holds "
                f"{self.n_ctx}; shorten the conversation, send fewer or smaller images, or start the server "
                "with a larger --ctx"
            )
        start = self._rewind(prompt.keys)
        self._prefill(prompt, start, set(image_ends + ([prompt.stable] if prompt.stable else [])), encoded)
        t2 = time.perf_counter()
        sampler = Sampler(job.sampling, list(prompt.text_tokens), self.lm.n_vocab, grammar=job.grammar, lm=self.lm)
        text, stops = TextStream(self.lm), StopFilter(job.stop)
        generated, reason, first = 0, "length", 0.0
        try:
            while generated < job.max_tokens and len(self.live) < self.n_ctx:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                token = sampler.sample(self.context)
                if self.lm.is_eog(token):
                    reason = "stop"
                    break
                generated += 1
                first = first or time.perf_counter()
                if piece := stops.feed(text.push(token)):
                    yield Delta(piece)
                if stops.stopped:
                    reason = "stop"
                    break
                if generated < job.max_tokens:
                    self._decode_text([token], logits=True)
            if piece := stops.feed(text.flush()) + stops.finish():
                yield Delta(piece)
        finally:
            sampler.close()
        t3 = time.perf_counter()
        usage = Usage(
            prompt_tokens=n,
            completion_tokens=generated,
            cached_tokens=start,
            image_tokens=prompt.image_positions,
            images_encoded=n_encoded,
            encode_ms=encode_s * 1e3,
            prompt_ms=(t2 - t0 - encode_s) * 1e3,  # rendering, tokenizing and evaluating; not encoding
            decode_ms=(t3 - t2) * 1e3,
            first_token_ms=((first or t3) - t0) * 1e3,
        )
        yield Finish(reason, usage)

    def warm(self, job: Job, reply: str, *, wanted: Callable[[], bool] = lambda: False) -> int:
        """Evaluate the reply as the next request will render it (history, then the next user turn's opening)
        and snapshot it, so that a resent conversation costs only its new message; returns positions added.

        Spare-time work: it stops between small batches as soon as `wanted()` (a request is waiting), and
        it does nothing when the text after the last snapshot holds an image (then a request would wait long).
        """
        with self._lock:
            text = self.template.next_turn_prefix(job.messages, reply, enable_thinking=job.thinking, tools=job.tools)
            units: list[Unit] = []
            for seg in layout(text, list(job.pictures), []):
                cached = self.images.get((self.mmproj(job.mode).mode, seg.digest)) if not isinstance(seg, str) else None
                if not isinstance(seg, str) and cached is None:
                    return 0  # an image fell out of the cache: not worth encoding it again here
                units += [TextRun(tuple(self.lm.tokenize(seg)))] if isinstance(seg, str) else cached.layout.units
            prompt = Prompt(tuple(units))
            if prompt.n_pos >= self.n_ctx:
                return 0
            start = self._rewind(prompt.keys + (None,))  # None: a key no prompt has, so all of it is kept
            for pos, unit in prompt.placed():
                if pos + unit.n_pos > start and isinstance(unit, ImageSpan):
                    return 0
            tokens = prompt.keys[start:]
            for i in range(0, len(tokens), _WARM_BATCH):
                if wanted():
                    return 0
                self._decode_text(list(tokens[i : i + _WARM_BATCH]), logits=False)
            self.states.put(tuple(self.live), self.context.save_state())
            return prompt.n_pos - start

    def _rewind(self, keys: tuple[Key, ...]) -> int:
        """Make the context hold the longest usable prefix of `keys`; returns its length (at least one key
        is left to evaluate: its logits choose the first reply token)."""
        limit = len(keys) - 1
        live = len(self.live) if len(self.live) <= limit and tuple(self.live) == keys[: len(self.live)] else 0
        snap = self.states.best(keys, limit)
        if snap is not None and len(snap[0]) > live:
            self.live = []
            if self.context.restore_state(snap[1]):
                self.live = list(snap[0])
                return len(self.live)
        if live and live == len(self.live):
            return live
        self.context.clear()
        self.live = []
        return 0

    def _prefill(self, prompt: Prompt, start: int, marks: set[int], encoded: dict[str, EncodedImage]) -> None:
        """Evaluate the prompt from `start`, saving a snapshot at each mark past it."""
        n = prompt.n_pos
        for pos, unit in prompt.placed():
            end = pos + unit.n_pos
            if end <= start:
                continue
            if isinstance(unit, ImageSpan):
                assert pos >= start, "a snapshot cannot end inside an image"
                self._decode_embd(unit, encoded[unit.image].embeddings[unit.chunk])
            else:
                cut = next((m for m in sorted(marks) if max(pos, start) < m < end), None)
                lo = max(pos, start)
                for a, b in [(lo, cut), (cut, end)] if cut else [(lo, end)]:
                    self._decode_text(list(unit.tokens[a - pos : b - pos]), logits=b == n)
                    if b in marks and b < n:
                        self.states.put(tuple(self.live), self.context.save_state())
                continue
            if end in marks and end < n:
                self.states.put(tuple(self.live), self.context.save_state())

    def _decode_text(self, tokens: list[int], *, logits: bool) -> None:
        pos = len(self.live)
        try:
            self.context.decode(tokens, pos, logits_last=logits)
        except BaseException:
            self._forget()
            raise
        self.live += tokens

    def _decode_embd(self, span: ImageSpan, embd) -> None:
        try:
            self.context.decode_embd(embd, len(self.live))
        except BaseException:
            self._forget()
            raise
        self.live += span.keys()

    def _forget(self) -> None:
        """After a failed evaluation the memory may hold more than `live`: start from nothing next time."""
        self.context.clear()
        self.live = []
