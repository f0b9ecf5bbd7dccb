"""Reading and checking the LM and mmproj GGUF headers before llama.cpp or libmtmd sees the files.

llama.cpp rejects most bad files politely, but clip.cpp asserts (aborting the process) on a wrong key
type, a position table that is not 70x70 or an mmproj narrower than the LM. Every check here runs on
the header alone (gguf-py's reader maps the file; no tensor data is read).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from ..errors import ModelLoadError

LM_ARCH = "qwen35"
PROJECTOR = "minicpmv4_6"
MODE_BY_SCALE = {4: "16x", 2: "4x"}  # clip.vision.projector.scale_factor; clip.cpp's default is 4
_POSITION_ROWS = 70 * 70  # clip.cpp hardcodes a 70x70 position-embedding grid for this projector
_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, struct.error)
_U32 = (GGUFValueType.UINT32,)
# Keys clip.cpp reads with typed getters that GGML_ASSERT the stored type (spec: llamacpp-spec §2.1).
_CLIP_TYPES = {
    "clip.vision.projection_dim": _U32, "clip.vision.image_size": _U32, "clip.vision.patch_size": _U32,
    "clip.vision.embedding_length": _U32, "clip.vision.feed_forward_length": _U32,
    "clip.vision.block_count": _U32, "clip.vision.attention.head_count": _U32,
    "clip.vision.attention.layer_norm_epsilon": (GGUFValueType.FLOAT32,),
    "clip.has_vision_encoder": (GGUFValueType.BOOL,),
}  # fmt: skip
_CLIP_OPTIONAL_TYPES = {
    "clip.vision.projector.scale_factor": _U32, "clip.use_gelu": (GGUFValueType.BOOL,),
    "clip.vision.image_mean": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    "clip.vision.image_std": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    "clip.vision.wa_layer_indexes": (GGUFValueType.ARRAY, GGUFValueType.INT32),
}  # fmt: skip


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


def _open(path: Path, kind: str) -> GGUFReader:
    """gguf-py's reader over `path`, or ModelLoadError naming the problem."""
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
        return GGUFReader(path)
    except _PARSE_ERRORS as err:  # gguf-py reports truncation as reshape or index errors
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF ({err})") from err
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read it: {err.strerror}") from err


def _value(reader: GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _architecture(reader: GGUFReader) -> str | None:
    arch = _value(reader, "general.architecture")
    return arch if isinstance(arch, str) else None


def read_lm_header(path: Path) -> LMHeader:
    """Check that `path` is a MiniCPM-V 4.6 LM GGUF (arch qwen35 with a chat template) and read its header.

    Raises:
        ModelLoadError: missing, unreadable, corrupt, an mmproj, another architecture, or no chat template.
    """
    reader = _open(path, "LM")
    arch = _architecture(reader)
    if arch == "clip":
        raise ModelLoadError(f"{path}: this is an mmproj GGUF where the LM GGUF was expected")
    if arch != LM_ARCH:
        raise ModelLoadError(f"{path}: architecture {arch!r}, expected {LM_ARCH!r} (a MiniCPM-V 4.6 LM GGUF)")
    n_embd = _value(reader, f"{LM_ARCH}.embedding_length")
    template = _value(reader, "tokenizer.chat_template")
    if not isinstance(n_embd, int):
        raise ModelLoadError(f"{path}: no {LM_ARCH}.embedding_length key; the file is incomplete")
    if not isinstance(template, str) or not template.strip():
        raise ModelLoadError(f"{path}: no tokenizer.chat_template; convert the checkpoint again with "
                             "`minicpmv-gguf convert`")  # fmt: skip
    return LMHeader(Path(path), n_embd, int(_value(reader, f"{LM_ARCH}.context_length") or 0), template,
                    _value(reader, "general.file_type"))  # fmt: skip


def read_mmproj_header(path: Path) -> MmprojHeader:
    """Check that `path` is a minicpmv4_6 mmproj that libmtmd can load without asserting; read its mode.

    Raises:
        ModelLoadError: missing, unreadable, corrupt, not an mmproj, another projector, or wrong key types.
    """
    reader = _open(path, "mmproj")
    arch = _architecture(reader)
    if arch != "clip":
        hint = "; it looks like an LM GGUF" if arch == LM_ARCH else ""
        raise ModelLoadError(f"{path}: architecture {arch!r}, expected 'clip' (an mmproj GGUF){hint}")
    projector = _value(reader, "clip.projector_type")
    if projector != PROJECTOR:
        raise ModelLoadError(f"{path}: projector {projector!r}, expected {PROJECTOR!r} (MiniCPM-V 4.6)")
    _check_types(reader, path)
    scale = _value(reader, "clip.vision.projector.scale_factor")
    scale = 4 if scale is None else scale
    if scale not in MODE_BY_SCALE:
        raise ModelLoadError(f"{path}: clip.vision.projector.scale_factor is {scale}; libmtmd accepts 4 (16x) or 2 (4x)")
    _check_tensors(reader, path)
    return MmprojHeader(Path(path), MODE_BY_SCALE[scale], _value(reader, "clip.vision.projection_dim"),
                        _value(reader, "clip.vision.image_size"), _value(reader, "clip.vision.patch_size"))


def _check_types(reader: GGUFReader, path: Path) -> None:
    """Each key clip.cpp reads must exist (when required) with exactly the type it asserts."""
    for key, want in {**_CLIP_TYPES, **_CLIP_OPTIONAL_TYPES}.items():
        field = reader.fields.get(key)
        if field is None:
            if key in _CLIP_TYPES:
                raise ModelLoadError(f"{path}: the mmproj has no {key} key; libmtmd needs it")
            continue
        if tuple(field.types) != want:
            got = "/".join(t.name for t in field.types)
            raise ModelLoadError(f"{path}: {key} is stored as {got}; libmtmd needs {'/'.join(t.name for t in want)}")
    n_layer = _value(reader, "clip.vision.block_count")
    for i in _value(reader, "clip.vision.wa_layer_indexes") or []:
        if not 0 <= i < n_layer:
            raise ModelLoadError(f"{path}: clip.vision.wa_layer_indexes holds {i}, outside 0..{n_layer - 1}")


def _check_tensors(reader: GGUFReader, path: Path) -> None:
    """The shapes clip.cpp relies on: the merger's output width and the 70x70 position table."""
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}  # torch order
    down, pos = shapes.get("mm.down.weight"), shapes.get("v.position_embd.weight")
    width = _value(reader, "clip.vision.projection_dim")
    if down is None or pos is None:
        missing = "mm.down.weight" if down is None else "v.position_embd.weight"
        raise ModelLoadError(f"{path}: the mmproj has no {missing} tensor")
    if down[0] != width:
        raise ModelLoadError(f"{path}: mm.down.weight gives {down[0]}-wide embeddings but projection_dim is {width}")
    if pos[0] != _POSITION_ROWS:
        raise ModelLoadError(f"{path}: v.position_embd.weight has {pos[0]} rows; libmtmd needs 70x70 = 4900")


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
