"""convert_lm: a MiniCPM-V 4.6 checkpoint directory -> the language-model GGUF (`qwen35`).

Tensors are streamed: an untransformed tensor is read, converted and written in row chunks (a
same-type tensor is copied byte for byte); a transformed one (norms, ssm_a, conv1d, head reorders)
is small and is read whole. Peak memory is about one chunk plus the largest transformed tensor.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import ToolkitError
from ..ggml_kernels import f32_to_bf16, f32_to_f16, quantize_rows
from ..gguf_io import Progress, TensorOut, check_output, write_gguf
from ..safetensors_io import read_raw, read_rows, read_tensor, row_chunks
from .metadata import ARCH, general_kvs, lm_hparams, tokenizer_kvs
from .tensor_map import PlannedTensor, lm_rules, plan_tensors
from .transforms import keep
from .vocab import Vocab, read_vocab

log = logging.getLogger(__name__)

OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16,
              Q.BF16: LlamaFileType.MOSTLY_BF16, Q.Q8_0: LlamaFileType.MOSTLY_Q8_0}
SOURCE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}


@dataclass(frozen=True)
class PlanRow:
    """One line of the conversion plan, as --dry-run prints it."""

    hf_name: str
    gguf_name: str
    source_dtype: str
    ggml_type: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LMPlan:
    """A validated conversion, ready to write: checkpoint, vocabulary and every tensor's fate."""

    checkpoint: Checkpoint
    vocab: Vocab
    out_type: Q
    tensors: list[TensorOut]
    rows: list[PlanRow]
    skipped: list[str]

    @property
    def n_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> str:
        return (f"dry run: {len(self.rows)} tensors ({self.n_bytes / 1e6:.1f} MB, {self.out_type.name}), "
                f"{len(self.skipped)} non-LM tensors skipped, tokenizer: {self.vocab.recognised}; nothing written")


@dataclass(frozen=True)
class ConvertResult:
    """What write_lm wrote."""

    out: Path
    plan: LMPlan
    n_bytes: int
    seconds: float

    def summary(self) -> str:
        p = self.plan
        return (f"wrote {self.out}: {len(p.rows)} tensors, {self.n_bytes / 1e6:.1f} MB, {p.out_type.name}, "
                f"in {self.seconds:.1f} s ({len(p.skipped)} non-LM tensors skipped; tokenizer: {p.vocab.recognised})")


def plan_lm(checkpoint: Path, *, outtype: str = "auto") -> LMPlan:
    """Validate a checkpoint and plan its LM GGUF; reads headers and tokenizer only.

    Args:
        checkpoint: a local Hugging Face checkpoint directory.
        outtype: "auto" (the checkpoint's own float type: lossless), "f32", "f16", "bf16" or "q8_0".
    Raises:
        ToolkitError (CheckpointError, TensorMapError, TokenizerError): user-fixable problems.
    """
    ckpt = open_checkpoint(Path(checkpoint))
    try:
        planned, skipped = plan_tensors(ckpt.tensors.values(), lm_rules(ckpt.text), ckpt.text)
    except ToolkitError as err:
        raise type(err)(f"{ckpt.path}: {err}") from err
    if skipped:
        log.info("leaving out %d tensors of the vision tower, merger or MTP heads", len(skipped))
    vocab = read_vocab(ckpt.path, ckpt.text.vocab_size)
    out_type = _resolve_outtype(outtype, planned)
    tensors = [_tensor_out(p, out_type) for p in planned]
    rows = [PlanRow(p.hf_name, p.gguf_name, p.source.dtype, t.ggml_type.name, t.shape) for p, t in zip(planned, tensors)]
    return LMPlan(ckpt, vocab, out_type, tensors, rows, skipped)


def write_lm(plan: LMPlan, out: Path, *, overwrite: bool = False, name: str | None = None,
             source_url: str | None = None, progress: Progress | None = None) -> ConvertResult:
    """Write a planned LM GGUF atomically.

    Args:
        out: the GGUF file to write; `overwrite` replaces an existing one.
        name, source_url: general.name (default: the checkpoint directory's name) and general.source.url.
        progress: called with (bytes written, tensor name) after each chunk.
    Raises:
        OutputError: `out` exists (without overwrite) or cannot be written; CheckpointError on read failures.
    """
    t0 = time.perf_counter()
    ckpt = plan.checkpoint
    kvs = [*general_kvs(name=name or ckpt.path.resolve().name, file_type=int(FILE_TYPES[plan.out_type]),
                        license=_license(ckpt.path), source_url=source_url or _source_url(ckpt)),
           *lm_hparams(ckpt.text), *tokenizer_kvs(plan.vocab)]
    n_bytes = write_gguf(Path(out), ARCH, kvs, plan.tensors, overwrite=overwrite, progress=progress)
    return ConvertResult(Path(out), plan, n_bytes, time.perf_counter() - t0)


def convert_lm(checkpoint: Path, out: Path, *, outtype: str = "auto", overwrite: bool = False,
               name: str | None = None, source_url: str | None = None,
               progress: Progress | None = None) -> ConvertResult:
    """plan_lm + write_lm: convert a MiniCPM-V 4.6 checkpoint's language model to a qwen35 GGUF.

    Example:
        >>> convert_lm(Path("MiniCPM-V-4_6"), Path("lm.gguf"), outtype="f16").summary()
    """
    check_output(Path(out), overwrite=overwrite)  # fail before the long part
    return write_lm(plan_lm(checkpoint, outtype=outtype), out, overwrite=overwrite, name=name,
                    source_url=source_url, progress=progress)


def _resolve_outtype(outtype: str, planned: list[PlannedTensor]) -> Q:
    if outtype == "auto":
        embd = next(p for p in planned if p.gguf_name == "token_embd.weight")
        return SOURCE_TYPES[embd.source.dtype]
    if outtype not in OUTTYPES:
        raise ToolkitError(f"outtype {outtype!r}: choose auto, {', '.join(OUTTYPES)}")
    return OUTTYPES[outtype]


def ggml_type_for(p: PlannedTensor, out_type: Q) -> Q:
    """The dtype policy: F32 where llama.cpp needs it, else the outtype (Q8_0 needs rows of 32)."""
    if p.f32:
        return Q.F32
    if out_type == Q.Q8_0 and p.gguf_shape[-1] % 32:
        return Q.F16  # llama.cpp's converter falls back the same way
    return out_type


def _tensor_out(p: PlannedTensor, out_type: Q) -> TensorOut:
    ggml_type = ggml_type_for(p, out_type)
    return TensorOut(p.gguf_name, p.gguf_shape, ggml_type, lambda: _chunks(p, ggml_type))


def _chunks(p: PlannedTensor, ggml_type: Q) -> Iterator[np.ndarray]:
    if p.transform is not keep:
        w = p.transform(read_tensor(p.source))
        assert w.shape == p.gguf_shape, (p.hf_name, w.shape, p.gguf_shape)
        yield encode(w, ggml_type)
        return
    same_type = SOURCE_TYPES[p.source.dtype] == ggml_type
    for start, stop in row_chunks(p.source):
        yield read_raw(p.source, start, stop) if same_type else encode(read_rows(p.source, start, stop), ggml_type)


def encode(w: np.ndarray, ggml_type: Q) -> np.ndarray:
    """float32 -> the stored form of a GGML type, with ggml's own kernels (llama.cpp's rounding)."""
    if ggml_type == Q.F32:
        return w.astype(np.float32, copy=False)
    if ggml_type == Q.F16:
        return f32_to_f16(w)
    if ggml_type == Q.BF16:
        return f32_to_bf16(w)
    return quantize_rows(w, ggml_type)


def _license(path: Path) -> str | None:
    """The `license:` of the model card's YAML front matter, if any."""
    card = path / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    lic = m and re.search(r"^license:\s*['\"]?([\w.+-]+)", m.group(1), re.M)
    return lic.group(1) if lic else None


def _source_url(ckpt: Checkpoint) -> str | None:
    repo = ckpt.config.get("_name_or_path")
    if isinstance(repo, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        return f"https://huggingface.co/{repo}"
    return None
