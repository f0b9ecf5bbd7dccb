"""Reading and checking the LM and mmproj GGUF headers before llama.cpp or libmtmd sees the files.

llama.cpp rejects most bad files politely, but clip.cpp asserts (aborting the process) on a wrong key
type, a position table that is not 70x70 or an mmproj narrower than the LM. Every check here runs on
the header alone, read by gguf_io's fast reader: gguf-py's GGUFReader parses the 248k-token vocabulary,
which would dominate the time to open a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GGUFError, ModelLoadError
from ..gguf_io import ArraySummary, GGUFHeader, check_gguf_complete, read_strings
from ..spec import LM_ARCH, MODE_BY_SCALE, PROJECTOR
from .prompt import template_problem
from .tensors import LM_USER, MMPROJ_USER, lm_problems, mmproj_problems, summary

_ARRAY_HEAD = 4096  # array items kept from the header: all of an mmproj's (mean, std, layer indexes)
_U32 = ("UINT32",)
# Keys clip.cpp reads with typed getters that GGML_ASSERT the stored type (spec: llamacpp-spec §2.1).
_CLIP_TYPES = {
    "clip.vision.projection_dim": _U32,
    "clip.vision.image_size": _U32,
    "clip.vision.patch_size": _U32,
    "clip.vision.embedding_length": _U32,
    "clip.vision.feed_forward_length": _U32,
    "clip.vision.block_count": _U32,
    "clip.vision.attention.head_count": _U32,
    "clip.vision.attention.layer_norm_epsilon": ("FLOAT32",),
    "clip.has_vision_encoder": ("BOOL",),
}
# Optional keys clip.cpp reads with the same asserting getters (general.* are printed when loading).
_CLIP_STRINGS = ("general.name", "general.description", "clip.vision.mm_patch_merge_type", "clip.vision.projector_type")
_CLIP_OPTIONAL_TYPES = {
    "clip.vision.projector.scale_factor": _U32,
    "clip.use_gelu": ("BOOL",),
    "clip.vision.image_mean": ("ARRAY", "FLOAT32"),
    "clip.vision.image_std": ("ARRAY", "FLOAT32"),
    "clip.vision.wa_layer_indexes": ("ARRAY", "INT32"),
    "clip.use_silu": ("BOOL",),
    **{key: ("STRING",) for key in _CLIP_STRINGS},
}


@dataclass(frozen=True)
class LMHeader:
    """What the runtime needs from the LM GGUF header."""

    path: Path
    n_embd: int
    n_ctx_train: int
    chat_template: str
    file_type: int | None


@dataclass(frozen=True)
class MmprojHeader:
    """What the runtime needs from an mmproj GGUF header; `mode` is "16x" or "4x"."""

    path: Path
    mode: str
    projection_dim: int
    image_size: int  # the slice size (448 in the released model)
    patch_size: int


def _open(path: Path, kind: str, array_head: int = 0) -> GGUFHeader:
    """The GGUF header of `path` (tensor extents checked against the file size), or ModelLoadError."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: {kind} GGUF not found" if not path.exists() else f"{path}: not a file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read it: {err.strerror}") from err
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        return check_gguf_complete(path, array_head=array_head)
    except GGUFError as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise ModelLoadError(f"{path}: corrupt or truncated {kind} GGUF ({reason})") from err


def _value(header: GGUFHeader, key: str) -> Any:
    value = header.kvs.get(key)
    return list(value.head) if isinstance(value, ArraySummary) else value


def _types(header: GGUFHeader, key: str) -> tuple[str, ...]:
    """The stored type of a key as gguf-py spells it: ("UINT32",) or ("ARRAY", "FLOAT32")."""
    value = header.kvs.get(key)
    return ("ARRAY", value.type) if isinstance(value, ArraySummary) else (header.kv_types[key],)


def _architecture(header: GGUFHeader) -> str | None:
    arch = _value(header, "general.architecture")
    return arch if isinstance(arch, str) else None


def read_lm_header(path: Path) -> LMHeader:
    """Check that `path` is a MiniCPM-V 4.6 LM GGUF (arch qwen35 with a chat template) and read its header.

    Raises:
        ModelLoadError: missing, unreadable, corrupt, an mmproj, another architecture, or no chat template.
    """
    header = _open(path, "LM", _ARRAY_HEAD)
    arch = _architecture(header)
    if arch == "clip":
        raise ModelLoadError(f"{path}: this is an mmproj GGUF where the LM GGUF was expected")
    if arch != LM_ARCH:
        raise ModelLoadError(f"{path}: architecture {arch!r}, expected {LM_ARCH!r} (a MiniCPM-V 4.6 LM GGUF)")
    n_embd = _value(header, f"{LM_ARCH}.embedding_length")
    template = _value(header, "tokenizer.chat_template")
    if not isinstance(n_embd, int):
        raise ModelLoadError(f"{path}: no {LM_ARCH}.embedding_length key; the file is incomplete")
    if not isinstance(template, str) or not template.strip():
        raise ModelLoadError(
            f"{path}: no tokenizer.chat_template; convert the checkpoint again with `minicpmv-gguf convert`"
        )
    tokens = header.kvs.get("tokenizer.ggml.tokens")  # a key renamed by damage is simply absent
    ok = isinstance(tokens, ArraySummary) and tokens.type == "STRING"
    tokens = read_strings(path, tokens, header.data_offset) if ok else []
    if problem := template_problem(template):
        raise ModelLoadError(f"{path}: tokenizer.chat_template {problem}")
    if problems := lm_problems(header, tokens):
        raise _refused(path, LM_USER, problems)
    return LMHeader(
        Path(path),
        n_embd,
        int(_value(header, f"{LM_ARCH}.context_length") or 0),
        template,
        _value(header, "general.file_type"),
    )


def read_mmproj_header(path: Path) -> MmprojHeader:
    """Check that `path` is a minicpmv4_6 mmproj that libmtmd can load without asserting; read its mode.

    Raises:
        ModelLoadError: missing, unreadable, corrupt, not an mmproj, another projector, or wrong key types.
    """
    header = _open(path, "mmproj", _ARRAY_HEAD)
    arch = _architecture(header)
    if arch != "clip":
        hint = "; it looks like an LM GGUF" if arch == LM_ARCH else ""
        raise ModelLoadError(f"{path}: architecture {arch!r}, expected 'clip' (an mmproj GGUF){hint}")
    projector = _value(header, "clip.projector_type")
    if projector != PROJECTOR:
        raise ModelLoadError(f"{path}: projector {projector!r}, expected {PROJECTOR!r} (MiniCPM-V 4.6)")
    _check_types(header, path)
    scale = _value(header, "clip.vision.projector.scale_factor")
    scale = 4 if scale is None else scale
    if scale not in MODE_BY_SCALE:
        raise ModelLoadError(
            f"{path}: clip.vision.projector.scale_factor is {scale}; libmtmd accepts 4 (16x) or 2 (4x)"
        )
    if problems := mmproj_problems(header, MODE_BY_SCALE[scale]):
        raise _refused(path, MMPROJ_USER, problems)
    return MmprojHeader(
        Path(path),
        MODE_BY_SCALE[scale],
        _value(header, "clip.vision.projection_dim"),
        _value(header, "clip.vision.image_size"),
        _value(header, "clip.vision.patch_size"),
    )


def _check_types(header: GGUFHeader, path: Path) -> None:
    """Each key clip.cpp reads must exist (when required) with exactly the type it asserts."""
    for key, want in {**_CLIP_TYPES, **_CLIP_OPTIONAL_TYPES}.items():
        if key not in header.kvs:
            if key in _CLIP_TYPES:
                raise ModelLoadError(f"{path}: the mmproj has no {key} key; libmtmd needs it")
            continue
        if (got := _types(header, key)) != want:
            raise ModelLoadError(f"{path}: {key} is stored as {'/'.join(got)}; libmtmd needs {'/'.join(want)}")
    n_layer = _value(header, "clip.vision.block_count")
    for i in _value(header, "clip.vision.wa_layer_indexes") or []:
        if not 0 <= i < n_layer:
            raise ModelLoadError(f"{path}: clip.vision.wa_layer_indexes holds {i}, outside 0..{n_layer - 1}")


def _refused(path: Path, user: str, problems: list[str]) -> ModelLoadError:
    """One error naming the file and listing every problem; `.problems` keeps them apart (inspect lists them)."""
    err = ModelLoadError(f"{path}: {len(problems)} problem(s) for {user}: {summary(problems)}")
    err.problems = problems
    return err


def gguf_problems(path: Path) -> list[str]:
    """What keeps a MiniCPM-V 4.6 LM or mmproj GGUF from loading (the checks `open_model` makes), or [].

    Files of other architectures are not this toolkit's to judge: [] as well.
    """
    try:
        arch = _architecture(_open(Path(path), "GGUF"))
        if arch == LM_ARCH:
            read_lm_header(path)
        elif arch == "clip":
            read_mmproj_header(path)
    except ModelLoadError as err:
        return getattr(err, "problems", None) or [str(err).removeprefix(f"{path}: ")]
    return []


def check_pair(lm: LMHeader, mmproj: MmprojHeader) -> None:
    """The mmproj's image embeddings must be as wide as the LM's token embeddings.

    Raises:
        ModelLoadError: the widths differ (the files come from different models).
    """
    if mmproj.projection_dim != lm.n_embd:
        raise ModelLoadError(
            f"{mmproj.path}: this mmproj makes {mmproj.projection_dim}-wide embeddings but {lm.path} expects "
            f"{lm.n_embd} (qwen35.embedding_length): the two files come from different models"
        )
