"""A chat turn's prompt, laid out as transformers lays it out for MiniCPM-V 4.6.

1. The LM GGUF's own Jinja chat template renders the conversation, in a jinja2 sandbox configured like
   transformers' `apply_chat_template`, with `enable_thinking` always passed explicitly.
2. As `MiniCPMV4_6Processor` does, each `<|image_pad|>` becomes `<image_id>k</image_id>` and image k
   (k counts the images of the whole conversation from 0), and each `<|video_pad|>` becomes that
   video's frames back to back, without image-id tags (the model card's `use_image_id=False` for video).
3. The text between images is NFC-normalised, like the tokenizer's normalizer (llama.cpp has none).

libmtmd then writes `<image>...</image>` (plus slices) around each image's embeddings.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from ..errors import InputError
from ..spec import IMAGE_PAD, VIDEO_PAD, image_id
from .media import Picture

_SENTINELS = ("\ue000", "\ue001")  # private-use characters standing in for a future reply and question

Message = dict[str, Any]
Segment = str | Picture


def _raise(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@dataclass(frozen=True)
class ChatTemplate:
    """The Jinja chat template stored in the LM GGUF (`tokenizer.chat_template`)."""

    source: str

    @cached_property
    def _compiled(self):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # transformers' settings (utils/chat_template_utils.py); llama-cpp-python's differ only in extensions
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        return env.from_string(self.source)

    def render(
        self,
        messages: list[Message],
        *,
        enable_thinking: bool,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """The prompt text for `messages`.

        Raises:
            InputError: the template rejected the conversation (e.g. an image in a system message).
        """
        from jinja2.exceptions import TemplateError

        try:
            extra = {"tools": tools} if tools else {}
            return self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking, **extra
            )
        except TemplateError as err:
            raise InputError(f"the chat template rejected the conversation: {err}") from err

    def shared_prefix(self, messages: list[Message], *, enable_thinking: bool, tools: list[dict] | None = None) -> int:
        """How many characters of this turn's prompt the next turn's prompt will start with.

        The template rewrites a reply once it is history (the 4.6 template drops its `<think>` block), so
        only the prompt up to `<|im_start|>assistant\\n` is certain to be reused.
        """
        now = self.render(messages, enable_thinking=enable_thinking, tools=tools)
        later = messages + [{"role": "assistant", "content": _SENTINELS[0]}, {"role": "user", "content": _SENTINELS[1]}]
        return len(os.path.commonprefix([now, self.render(later, enable_thinking=enable_thinking, tools=tools)]))

    def next_turn_prefix(
        self, messages: list[Message], reply: str, *, enable_thinking: bool, tools: list[dict] | None = None
    ) -> str:
        """The text the next turn's prompt starts with once `reply` is the assistant's answer to `messages`:
        the reply as history, and the next user turn's opening."""
        later = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": _SENTINELS[1]}]
        text = self.render(later, enable_thinking=enable_thinking, tools=tools, add_generation_prompt=False)
        return text[: text.index(_SENTINELS[1])]


def template_problem(source: str) -> str | None:
    """Why a GGUF's chat template cannot render a plain conversation (an image, a question, a reply), or None.

    Checked when the LM is opened, so that a damaged template is refused by file, not at the first turn.
    """
    from jinja2.exceptions import TemplateError

    messages = [user_message("Hi", 1, False), {"role": "assistant", "content": "Hello"}, user_message("Hi", 0, False)]
    try:
        for thinking in (False, True):
            ChatTemplate(source).render(messages, enable_thinking=thinking)
    except InputError as err:
        return f"cannot render a plain conversation: {err.__cause__ or err}"
    except TemplateError as err:  # a syntax error, raised when compiling
        return f"is not a valid Jinja template: {err}"
    return None


def user_message(text: str, n_images: int, has_video: bool) -> Message:
    """A user turn: images first, then the video, then the text (the model card's order)."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
    content += [{"type": "video"}] if has_video else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def layout(text: str, images: list[Picture], videos: list[list[Picture]]) -> list[Segment]:
    """The rendered prompt as NFC text segments and pictures, in order (see the module docstring).

    Raises:
        InputError: the text has more or fewer image/video placeholders than there are images/videos
            (e.g. a message that contains the literal text `<|image_pad|>`).
    """
    counts = text.count(IMAGE_PAD), text.count(VIDEO_PAD)
    if counts != (len(images), len(videos)):
        raise InputError(
            f"the prompt has {counts[0]} image and {counts[1]} video placeholders for "
            f"{len(images)} images and {len(videos)} videos; is {IMAGE_PAD} or {VIDEO_PAD} "
            "written in a message?"
        )
    segments: list[Segment] = []
    pending, pos, next_image, next_video = "", 0, 0, 0
    while True:
        hits = [(i, pad) for pad in (IMAGE_PAD, VIDEO_PAD) if (i := text.find(pad, pos)) >= 0]
        if not hits:
            break
        i, pad = min(hits)
        pending += text[pos:i]
        if pad == IMAGE_PAD:
            pending += image_id(next_image)
            segments += [nfc(pending), images[next_image]]
            next_image += 1
        else:
            segments += [nfc(pending), *videos[next_video]]
            next_video += 1
        pending, pos = "", i + len(pad)
    segments.append(nfc(pending + text[pos:]))
    return [s for s in segments if not isinstance(s, str) or s]


def nfc(text: str) -> str:
    """NFC, the normalizer of the MiniCPM-V 4.6 tokenizer (llama.cpp's tokenizer has none)."""
    return unicodedata.normalize("NFC", text)


def tail_start(text: str) -> int:
    """Where the text after the last image or video placeholder begins (0 without placeholders)."""
    ends = [i + len(pad) for pad in (IMAGE_PAD, VIDEO_PAD) if (i := text.rfind(pad)) >= 0]
    return max(ends, default=0)
