"""open_model: the LM GGUF and its mmproj GGUF(s), checked against each other and loaded for CPU chat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, ModelLoadError
from ..native import LanguageModel, physical_cores
from ..spec import DEFAULT_MAX_TOKENS, DEFAULT_MODE, DEFAULT_N_CTX, DETAIL_MODES
from .chat import ChatSession
from .headers import MmprojHeader, check_pair, read_lm_header, read_mmproj_header
from .media import DEFAULT_MAX_FRAMES
from .sampling import Sampling


class Model:
    """An LM GGUF loaded by llama.cpp plus the headers of its mmproj GGUFs (libmtmd loads those per turn)."""

    def __init__(self, lm: LanguageModel, mmprojs: dict[str, MmprojHeader], threads: int) -> None:
        self.lm, self.mmprojs, self.threads = lm, mmprojs, threads

    def mmproj_for(self, detail: str | None) -> MmprojHeader | None:
        """The mmproj for a detail level: "normal" = the 16x file, "high" = the 4x file, None = 16x if given.

        Raises:
            InputError: that mode was not given, or `detail` is unknown.
        """
        if detail is None:
            return self.mmprojs.get(DEFAULT_MODE) or next(iter(self.mmprojs.values()), None)
        if detail not in DETAIL_MODES:
            raise InputError(f"detail {detail!r}: choose {' or '.join(DETAIL_MODES)}")
        mode = DETAIL_MODES[detail]
        if mode not in self.mmprojs:
            given = ", ".join(f"{h.path} ({m})" for m, h in self.mmprojs.items()) or "none"
            raise InputError(
                f"detail {detail!r} needs a {mode} mmproj GGUF; given: {given} "
                f"(make one with `minicpmv-gguf mmproj CHECKPOINT --mode {mode}`)"
            )
        return self.mmprojs[mode]

    def chat(
        self,
        *,
        detail: str | None = None,
        thinking: bool = False,
        sampling: Sampling = Sampling(),
        system: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        n_ctx: int = DEFAULT_N_CTX,
        n_batch: int = 512,
        keep_vision: bool = False,
        max_frames: int = DEFAULT_MAX_FRAMES,
    ) -> ChatSession:
        """A new conversation with its own context (KV cache and recurrent state) of `n_ctx` tokens.

        Args:
            detail: "normal" (16x mmproj) or "high" (4x mmproj); None picks 16x when given.
            thinking: Thinking mode (the template's `enable_thinking`); off by default, as for the Instruct model.
            sampling: Sampling settings; `GREEDY` for deterministic argmax decoding.
            system: A system prompt.
            max_tokens: The longest reply, in tokens (per turn; `send` can override it).
            n_ctx: Context length: the whole conversation, images included, must fit.
            n_batch: Tokens evaluated at a time while reading the prompt.
            keep_vision: Keep the mmproj loaded between turns (faster image turns, more memory).
            max_frames: The most frames taken from one video.

        Raises:
            InputError: a setting is out of range, or `detail` asks for an mmproj that was not given.
            ModelLoadError: llama.cpp cannot make the context (e.g. out of memory).
        """
        if n_ctx < 16 or n_batch < 1:
            raise InputError(f"n_ctx must be >= 16 and n_batch >= 1, got {n_ctx} and {n_batch}")
        return ChatSession(
            self.lm,
            self.mmproj_for(detail),
            threads=self.threads,
            thinking=thinking,
            sampling=sampling,
            system=system,
            max_tokens=max_tokens,
            n_ctx=n_ctx,
            n_batch=n_batch,
            keep_vision=keep_vision,
            max_frames=max_frames,
        )

    def close(self) -> None:
        self.lm.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_model(
    lm: Path,
    mmproj: Path | Sequence[Path] = (),
    *,
    threads: int | None = None,
    mmap: bool = False,
    loras: Sequence[tuple[Path, float]] = (),
) -> Model:
    """Check and load a MiniCPM-V 4.6 LM GGUF and up to one mmproj GGUF per mode (16x, 4x).

    Every header is checked before llama.cpp or libmtmd opens anything: the LM is a qwen35 GGUF with
    a chat template, each mmproj a minicpmv4_6 projector whose mode is read from its header
    (`clip.vision.projector.scale_factor`) and whose embeddings are as wide as the LM's.

    Args:
        lm: The LM GGUF (any llama.cpp type, e.g. Q4_K_M).
        mmproj: One mmproj GGUF path or several (one per mode); none for text-only chat.
        threads: CPU threads; default: the physical cores.
        mmap: Memory-map the LM GGUF instead of reading it into memory. Off by default: llama.cpp
            repacks quantized weights for its faster CPU kernels, and with mmap both the repacked copy
            and the mapped file pages stay resident (README, "Chat on a CPU").
        loras: (llama.cpp LoRA adapter GGUF, scale) pairs (`minicpmv-gguf lora` writes them), applied to
            every conversation.

    Returns:
        A Model; `model.chat()` starts a conversation. Use it as a context manager or call `close()`.

    Raises:
        ModelLoadError: a file is missing, corrupt, of the wrong kind, or does not fit the LM.

    Example:
        >>> with open_model("lm-Q4_K_M.gguf", ["mmproj-16x.gguf", "mmproj-4x.gguf"]) as model:
        ...     print(model.chat().send("What is in the picture?", ["cat.jpg"]).text)
    """
    paths = [Path(mmproj)] if isinstance(mmproj, (str, Path)) else [Path(p) for p in mmproj]
    header = read_lm_header(Path(lm))
    mmprojs: dict[str, MmprojHeader] = {}
    for path in paths:
        mm = read_mmproj_header(path)
        check_pair(header, mm)
        if mm.mode in mmprojs:
            raise ModelLoadError(
                f"{path} and {mmprojs[mm.mode].path} are both {mm.mode} mmproj GGUFs; "
                "give at most one per mode (16x and 4x)"
            )
        mmprojs[mm.mode] = mm
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    model = LanguageModel(header, mmap=mmap)
    try:
        for path, scale in loras:
            if not Path(path).is_file():
                raise ModelLoadError(f"{path}: LoRA adapter GGUF not found")
            model.add_lora(Path(path), scale)
    except BaseException:
        model.close()
        raise
    return Model(model, mmprojs, threads or physical_cores())
