"""A chat session: the conversation so far, the context memory, and one streamed reply per turn.

Each turn renders the whole conversation (prompt.py), reuses what the context already holds
(cache.py), encodes only new images (vision.py), then samples the reply token by token. The mmproj is
loaded when a turn has images to encode and, unless `keep_vision`, freed again once they are in the
LM's memory: only the LM stays resident between image turns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from ..native import Context, LanguageModel, MediaChunks, Vision
from .cache import SequenceCache, common_prefix
from .headers import MmprojHeader
from .media import ImageSource, Picture, fit_within, load_image, load_video
from .prompt import ChatTemplate, Message, layout, nfc, tail_start, user_message
from .reply import Clock, Reply, Timings, split_reasoning
from .sampling import Sampler, Sampling, TextStream
from .units import ImageSpan, PictureLayout, Prompt, TextRun, Unit, picture_layout


def stable_point(rendered: str, shared: int, prompt: Prompt, tokenize) -> int | None:
    """The position that `shared` characters of the rendered prompt end at, when it falls in the last text
    run (where the next turn's prompt will diverge: a snapshot point); None otherwise."""
    tail = tail_start(rendered)
    offset = shared - tail
    last = prompt.units[-1]
    if offset <= 0 or not isinstance(last, TextRun):
        return None
    head = tokenize(nfc(rendered[tail : tail + offset]))
    return prompt.n_pos - last.n_pos + common_prefix(head, last.tokens)


class ChatSession:
    """A conversation with a loaded LM and, for images, an mmproj GGUF (see Model.chat); not thread-safe.

    Several sessions may share one LanguageModel: each has its own context (KV cache and recurrent state).
    """

    def __init__(
        self,
        lm: LanguageModel,
        mmproj: MmprojHeader | None,
        *,
        threads: int,
        thinking: bool,
        sampling: Sampling,
        system: str | None,
        max_tokens: int,
        n_ctx: int,
        n_batch: int,
        keep_vision: bool,
        max_frames: int,
    ) -> None:
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        self.lm, self.mmproj, self.threads = lm, mmproj, threads
        self.thinking, self.sampling, self.max_tokens = thinking, sampling, max_tokens
        self.keep_vision, self.max_frames = keep_vision, max_frames
        self.template = ChatTemplate(lm.header.chat_template)
        self.context = Context(lm, n_ctx=n_ctx, n_batch=n_batch, threads=threads)
        self.cache = SequenceCache(self.context)
        self._system = [{"role": "system", "content": system}] if system else []
        self._messages: list[Message] = list(self._system)
        self._images: list[Picture] = []
        self._videos: list[list[Picture]] = []
        self._layouts: dict[str, PictureLayout] = {}  # picture digest -> its units, kept for the conversation
        self._chunks: dict[str, MediaChunks] = {}  # picture digest -> libmtmd's chunks, this turn only
        self._vision: Vision | None = None
        self._active: Iterator[str] | None = None
        self.last_reply: Reply | None = None

    @property
    def vision_loaded(self) -> bool:
        """Whether the mmproj is in memory now (between turns only with keep_vision)."""
        return self._vision is not None

    @property
    def messages(self) -> list[Message]:
        """The conversation so far, as the chat template sees it."""
        return [dict(m) for m in self._messages]

    def send(
        self,
        text: str,
        images: Sequence[ImageSource] = (),
        *,
        video: str | Path | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        """Ask one question (with images and/or a video) and wait for the whole reply.

        Args:
            text: The question.
            images: Paths, PIL images, uint8 RGB arrays [h, w, 3] or Pictures; each shown to the model
                as `<image_id>k</image_id>` + libmtmd's `<image>...</image>` (and slices), k counting
                the conversation's images from 0, as MiniCPMV4_6Processor does.
            video: A video file (read with PyAV, an optional dependency) or an animated GIF/WebP/PNG.
                Frames are taken at 1 per second (at most `max_frames`, spread over longer videos),
                fitted into the mmproj's slice size (one overview each, no slices) and laid out back
                to back without image-id tags: the model card's video layout (`use_image_id=False`).
            max_tokens: The longest reply, in tokens (default: the session's).

        Raises:
            InputError: an image or video cannot be read, or the prompt does not fit the context.
            ModelLoadError: libmtmd cannot load the mmproj.
        """
        for _ in self.stream(text, images, video=video, max_tokens=max_tokens):
            pass
        assert self.last_reply is not None
        return self.last_reply

    def stream(
        self,
        text: str,
        images: Sequence[ImageSource] = (),
        *,
        video: str | Path | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[str]:
        """Like `send`, but yields the reply's text as it is generated; `last_reply` holds the Reply after.

        Images and the video are read now (errors raise here); the prompt is evaluated on the first
        `next()`. Closing the iterator early (or Ctrl-C) keeps the partial reply in the conversation.
        """
        if self._active is not None:
            self._active.close()  # a reply left unfinished: keep it as interrupted
        pictures, frames = self._read_media(images, video)
        if max_tokens is not None and max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        self._active = self._turn(text, pictures, frames, max_tokens or self.max_tokens)
        return self._active

    def prompt_ids(
        self, text: str, images: Sequence[ImageSource] = (), *, video: str | Path | None = None
    ) -> list[int]:
        """The prompt `send` would evaluate for this question (the whole conversation and the generation
        prompt) as token ids, each image-embedding position as -1. Nothing is evaluated or kept."""
        pictures, frames = self._read_media(images, video)
        message, images_all, videos = self._with_question(text, pictures, frames)
        try:
            keys = self._build(self._messages + [message], images_all, videos, Clock()).keys
        finally:
            self._release_media(keep_vision=self.keep_vision)
        return [k if isinstance(k, int) else -1 for k in keys]

    def _read_media(self, images: Sequence[ImageSource], video: str | Path | None):
        pictures = [load_image(i) for i in images]
        frames = self._frames(video) if video is not None else None
        if (pictures or frames) and self.mmproj is None:
            raise InputError("images and video need an mmproj GGUF; open the model with one")
        return pictures, frames

    def _with_question(self, text: str, pictures: list[Picture], frames: list[Picture] | None):
        """(the new user message, every image of the conversation, every video) once `text` is asked."""
        message = user_message(text, len(pictures), frames is not None)
        return message, self._images + pictures, self._videos + ([frames] if frames is not None else [])

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        if self._active is not None:
            self._active.close()
        self._messages, self._images, self._videos = list(self._system), [], []
        self._layouts.clear()
        self.cache.clear()
        self.last_reply = None

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
        self._release_media(keep_vision=False)
        self.context.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _frames(self, video: str | Path) -> list[Picture]:
        side = self.mmproj.image_size if self.mmproj else 1
        return [fit_within(f, side) for f in load_video(video, max_frames=self.max_frames)]

    def _turn(self, text: str, pictures: list[Picture], frames: list[Picture] | None, max_tokens: int) -> Iterator[str]:
        clock = Clock()
        clock.switch("prefill")
        message, images, videos = self._with_question(text, pictures, frames)
        try:
            prompt = self._build(self._messages + [message], images, videos, clock)
            cached, encoded = self._prefill(
                prompt, {p.digest: p for p in images + [f for v in videos for f in v]}, clock
            )
            if not self.keep_vision:
                self._release_media(keep_vision=False)
            yield from self._generate(
                prompt,
                clock,
                max_tokens,
                cached,
                encoded,
                commit=lambda reply: self._commit(message, pictures, frames, reply),
            )
        finally:
            self._release_media(keep_vision=self.keep_vision)
            self._active = None

    def _commit(self, message: Message, pictures: list[Picture], frames: list[Picture] | None, raw: str) -> None:
        self._messages += [message, {"role": "assistant", "content": raw}]
        self._images += pictures
        self._videos += [frames] if frames is not None else []

    def _build(
        self, messages: list[Message], images: list[Picture], videos: list[list[Picture]], clock: Clock
    ) -> Prompt:
        """Render, lay out and tokenize the prompt; new pictures are preprocessed by libmtmd (not encoded)."""
        rendered = self.template.render(messages, enable_thinking=self.thinking)
        units: list[Unit] = []
        for seg in layout(rendered, images, videos):
            units += [TextRun(tuple(self.lm.tokenize(seg)))] if isinstance(seg, str) else self._layout(seg, clock).units
        prompt = Prompt(tuple(units))
        return Prompt(prompt.units, self._stable(rendered, messages, prompt))

    def _stable(self, rendered: str, messages: list[Message], prompt: Prompt) -> int | None:
        shared = self.template.shared_prefix(messages, enable_thinking=self.thinking)
        return stable_point(rendered, shared, prompt, self.lm.tokenize)

    def _layout(self, picture: Picture, clock: Clock) -> PictureLayout:
        if picture.digest not in self._layouts:
            self._layouts[picture.digest] = picture_layout(picture.digest, self._media(picture, clock).parts)
        return self._layouts[picture.digest]

    def _media(self, picture: Picture, clock: Clock) -> MediaChunks:
        """libmtmd's chunks for `picture`, made on first use this turn (time counted as encoding)."""
        if picture.digest not in self._chunks:
            phase = clock.phase
            clock.switch("encode")
            if self._vision is None:
                self._vision = Vision(self.mmproj, self.lm, threads=self.threads)
            self._chunks[picture.digest] = self._vision.tokenize(picture.rgb)
            clock.switch(phase)
        return self._chunks[picture.digest]

    def _prefill(self, prompt: Prompt, pictures: dict[str, Picture], clock: Clock) -> tuple[int, int]:
        """Encode what is new and evaluate it; returns (cached positions, pictures encoded)."""
        n = prompt.n_pos
        if n >= self.context.n_ctx:
            raise InputError(
                f"the prompt needs {n} tokens ({prompt.image_positions} for images) but the context "
                f"holds {self.context.n_ctx}; shorten it, use fewer or smaller images, or a larger "
                "context"
            )
        start = self.cache.rewind(prompt.keys)
        # Every new image is encoded before the LM evaluates anything, so the mmproj can be freed early.
        embeddings, encoded = {}, set()
        for pos, unit in prompt.placed():
            if isinstance(unit, ImageSpan) and pos >= start:
                part = self._media(pictures[unit.image], clock).parts[unit.chunk]
                clock.switch("encode")
                embeddings[pos] = self._vision.encode(part)
                encoded.add(unit.image)
                clock.switch("prefill")
        for pos, unit in prompt.placed():
            if isinstance(unit, TextRun):
                self._eval_text(unit.tokens, pos, start, prompt, last=pos + unit.n_pos == n)
            elif pos >= start:
                with self.cache.extending(unit.keys()):
                    part = self._chunks[unit.image].parts[unit.chunk]
                    self._vision.decode(self.context, part, embeddings.pop(pos), pos)
                if not embeddings and not self.keep_vision:
                    # The last image is in: free the mmproj before the text after it (the turn's peak).
                    self._release_media(keep_vision=False)
            else:
                assert pos + unit.n_pos <= start, "the cache cannot end inside an image"
        return start, len(encoded)

    def _eval_text(self, tokens: tuple[int, ...], pos: int, start: int, prompt: Prompt, *, last: bool) -> None:
        """Evaluate the part of one text item at or after `start`, saving the recurrent state at `stable`."""
        lo, end = max(pos, start), pos + len(tokens)
        stable = prompt.stable if prompt.stable is not None and lo <= prompt.stable <= end else None
        for a, b in [(lo, end)] if stable is None else [(lo, stable), (stable, end)]:
            if a == stable:
                self.cache.save()
            if b > a:
                with self.cache.extending(prompt.keys[a:b]):
                    self.context.decode(list(tokens[a - pos : b - pos]), a, logits_last=last and b == end)

    def _generate(
        self, prompt: Prompt, clock: Clock, max_tokens: int, cached: int, encoded: int, commit
    ) -> Iterator[str]:
        clock.switch("decode")
        sampler, out = Sampler(self.sampling, list(prompt.text_tokens), self.lm.n_vocab), TextStream(self.lm)
        tokens: list[int] = []
        pos, stop, first = prompt.n_pos, "interrupted", 0.0
        try:
            while True:
                token = sampler.sample(self.context)
                if self.lm.is_eog(token):
                    stop = "eos"
                    break
                tokens.append(token)
                first = first or clock.elapsed()
                piece = out.push(token)
                if piece:
                    clock.switch(None)  # the caller's time is not ours
                    yield piece
                    clock.switch("decode")
                if len(tokens) >= max_tokens or pos >= self.context.n_ctx:
                    stop = "max_tokens" if len(tokens) >= max_tokens else "context"
                    break
                with self.cache.extending([token]):
                    self.context.decode([token], pos, logits_last=True)
                pos += 1
        finally:
            sampler.close()
            clock.switch(None)
            raw = out.text()
            commit(raw)
            self.last_reply = self._reply(raw, tokens, stop, prompt, clock, cached, encoded, first)

    def _reply(
        self,
        raw: str,
        tokens: list[int],
        stop: str,
        prompt: Prompt,
        clock: Clock,
        cached: int,
        encoded: int,
        first: float,
    ) -> Reply:
        # Without thinking the template closed the think block itself: a `</think>` in the reply is text.
        reasoning, answer = split_reasoning(raw) if self.thinking else (None, raw.strip())
        s = clock.spent
        timings = Timings(
            prompt.n_pos,
            prompt.image_positions,
            cached,
            len(tokens),
            encoded,
            s["encode"],
            s["prefill"],
            s["decode"],
            first or clock.elapsed(),
            clock.elapsed(),
        )
        return Reply(answer, reasoning, tuple(tokens), stop, timings)

    def _release_media(self, *, keep_vision: bool) -> None:
        for media in self._chunks.values():
            media.close()
        self._chunks.clear()
        if self._vision is not None and not keep_vision:
            self._vision.close()
            self._vision = None
