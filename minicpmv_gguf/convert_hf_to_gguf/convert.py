"""convert_lm: a MiniCPM-V 4.6 checkpoint directory -> the language-model GGUF (`qwen35`).

Tensors are streamed: an untransformed tensor is read, converted and written in row chunks (a
same-type tensor is copied byte for byte); a transformed one (norms, ssm_a, conv1d, head reorders)
is small and is read whole. Peak memory is about one chunk plus the largest transformed tensor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import ToolkitError
from ..general_metadata import general_kvs, sampling_kvs
from ..gguf_io import Progress, TensorOut, check_output, write_gguf
from ..lora import Adapter, attach, lora_kvs, prepare
from ..spec import LM_ARCH
from ..tensor_plan import FILE_TYPES, PlanRow, plan_rows, plan_tensors, resolve_outtype, tensor_out
from .metadata import lm_hparams, tokenizer_kvs
from .tensor_map import SKIP_PREFIXES, lm_rules
from .vocab import Vocab, read_vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMPlan:
    """A validated conversion, ready to write: checkpoint, vocabulary and every tensor's fate."""

    checkpoint: Checkpoint
    vocab: Vocab
    out_type: Q
    tensors: list[TensorOut]
    rows: list[PlanRow]
    skipped: list[str]
    loras: list[Adapter] = field(default_factory=list)  # merged into the weights

    @property
    def n_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> str:
        return (
            f"dry run: {len(self.rows)} tensors ({self.n_bytes / 1e6:.1f} MB, {self.out_type.name}), "
            f"{len(self.skipped)} non-LM tensors skipped, tokenizer: {self.vocab.recognised}; nothing written"
        )


@dataclass(frozen=True)
class ConvertResult:
    """What write_lm wrote."""

    out: Path
    plan: LMPlan
    n_bytes: int
    seconds: float

    def summary(self) -> str:
        p = self.plan
        return (
            f"wrote {self.out}: {len(p.rows)} tensors, {self.n_bytes / 1e6:.1f} MB, {p.out_type.name}, "
            f"in {self.seconds:.1f} s ({len(p.skipped)} non-LM tensors skipped; tokenizer: {p.vocab.recognised})"
        )


def plan_lm(checkpoint: Path, *, outtype: str = "auto", loras: Sequence[Adapter] = ()) -> LMPlan:
    """Validate a checkpoint and plan its LM GGUF; reads headers and tokenizer only.

    Args:
        checkpoint: a local Hugging Face checkpoint directory.
        outtype: "auto" (the checkpoint's own float type: lossless), "f32", "f16", "bf16" or "q8_0".
        loras: adapters (lora.open_adapter) whose language-model targets are merged into the weights.
    Raises:
        ToolkitError (CheckpointError, TensorMapError, TokenizerError, LoraError): user-fixable problems.
    """
    ckpt = open_checkpoint(Path(checkpoint))
    try:
        planned, skipped = plan_tensors(
            ckpt.tensors.values(),
            lm_rules(ckpt.text),
            ckpt.text,
            n_blocks=ckpt.text.num_hidden_layers,
            layer_types=ckpt.text.layer_types,
            skip_prefixes=SKIP_PREFIXES,
        )
    except ToolkitError as err:
        raise type(err)(f"{ckpt.path}: {err}") from err
    loras = prepare(list(loras), ckpt)
    planned = attach(planned, loras, vision=False)
    if skipped:
        log.info("leaving out %d tensors of the vision tower, merger or MTP heads", len(skipped))
    vocab = read_vocab(ckpt.path, ckpt.text.vocab_size)
    out_type = resolve_outtype(outtype, planned)
    tensors = [tensor_out(p, out_type) for p in planned]
    return LMPlan(ckpt, vocab, out_type, tensors, plan_rows(planned, tensors), skipped, loras)


def write_lm(
    plan: LMPlan,
    out: Path,
    *,
    overwrite: bool = False,
    name: str | None = None,
    source_url: str | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
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
    kvs = [
        *general_kvs(
            ckpt, file_type=int(FILE_TYPES[plan.out_type]), gguf_type="model", name=name, source_url=source_url
        ),
        *lora_kvs(plan.loras, vision=False),
        *sampling_kvs(ckpt),
        *lm_hparams(ckpt.text),
        *tokenizer_kvs(plan.vocab),
    ]
    n_bytes = write_gguf(Path(out), LM_ARCH, kvs, plan.tensors, overwrite=overwrite, progress=progress)
    return ConvertResult(Path(out), plan, n_bytes, time.perf_counter() - t0)


def convert_lm(
    checkpoint: Path,
    out: Path,
    *,
    outtype: str = "auto",
    overwrite: bool = False,
    name: str | None = None,
    source_url: str | None = None,
    progress: Progress | None = None,
    loras: Sequence[Adapter] = (),
) -> ConvertResult:
    """plan_lm + write_lm: convert a MiniCPM-V 4.6 checkpoint's language model to a qwen35 GGUF.

    Example:
        >>> convert_lm(Path("MiniCPM-V-4_6"), Path("lm.gguf"), outtype="f16").summary()
    """
    check_output(Path(out), overwrite=overwrite)  # fail before the long part
    return write_lm(
        plan_lm(checkpoint, outtype=outtype, loras=loras),
        out,
        overwrite=overwrite,
        name=name,
        source_url=source_url,
        progress=progress,
    )
