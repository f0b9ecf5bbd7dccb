"""convert_mmproj: a MiniCPM-V 4.6 checkpoint -> the mmproj GGUF (`clip`, projector `minicpmv4_6`).

libmtmd cannot switch between 16x and 4x at run time (the mode is the file's scale_factor), so one
file is written per mode. Tensors stream exactly as in the LM converter (`tensor_plan`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import CheckpointError, ToolkitError
from ..general_metadata import general_kvs
from ..gguf_io import Progress, TensorOut, check_output, write_gguf
from ..lora import Adapter, attach, lora_kvs, prepare
from ..spec import DEFAULT_MODE, MMPROJ_TYPE, MODES
from ..tensor_plan import (
    FILE_TYPES,
    K_FALLBACK,
    MMPROJ_OUTTYPES,
    PlannedTensor,
    PlanRow,
    block_size,
    ggml_type_for,
    plan_rows,
    plan_tensors,
    resolve_outtype,
    tensor_out,
)
from .config import VisionConfig, parse_vision_config
from .metadata import ARCH, clip_kvs
from .tensor_map import V, mmproj_rules, mmproj_skip_prefixes, padded_width


@dataclass(frozen=True)
class MMProjPlan:
    """A validated mmproj conversion for one mode, ready to write."""

    checkpoint: Checkpoint
    vision: VisionConfig
    mode: str
    out_type: Q
    tensors: list[TensorOut]
    rows: list[PlanRow]
    skipped: list[str]
    ffn_width: int  # the encoder MLP width as written: intermediate_size, or zero-padded for a block type
    loras: list[Adapter] = field(default_factory=list)  # merged into the weights

    @property
    def n_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> str:
        return (
            f"dry run ({self.mode}): {len(self.rows)} tensors ({self.n_bytes / 1e6:.1f} MB, {self.out_type.name}), "
            f"{len(self.skipped)} non-vision tensors skipped; nothing written"
        )


@dataclass(frozen=True)
class MMProjResult:
    """What write_mmproj wrote."""

    out: Path
    plan: MMProjPlan
    n_bytes: int
    seconds: float

    def summary(self) -> str:
        p = self.plan
        return (
            f"wrote {self.out}: {p.mode} mmproj, {len(p.rows)} tensors, {self.n_bytes / 1e6:.1f} MB, "
            f"{p.out_type.name}, in {self.seconds:.1f} s"
        )


def plan_mmproj(
    checkpoint: Path,
    *,
    mode: str = DEFAULT_MODE,
    outtype: str = MMPROJ_TYPE,
    pad_mlp_to: int | None = None,
    loras: Sequence[Adapter] = (),
) -> MMProjPlan:
    """Validate a checkpoint's vision half and plan the mmproj GGUF of one mode; reads headers only.

    Args:
        mode: "16x" (default: 4x fewer visual tokens than 4x) or "4x" (for small text and fine detail).
        outtype: "f16" (default), "f32", "bf16", a 32-block type ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0",
            "iq4_nl"), a k-quant ("q6_k", "q5_k", "q4_k": rows of 256, else llama-quantize's 32-block
            fallback), or "auto" (the checkpoint's own type).
        pad_mlp_to: zero-pad the MLP width to a multiple of this (default: what the type needs; the
            output is the same either way, which the tests check on float files).
        loras: adapters (lora.open_adapter) whose vision, merger and projector targets are merged.
    Raises:
        ToolkitError (CheckpointError, TensorMapError, LoraError): user-fixable problems, including a block
            type whose blocks do not fit a matrix's rows (only the MLP width can be zero-padded).
    """
    if mode not in MODES:
        raise ToolkitError(f"mode {mode!r}: choose {' or '.join(MODES)}")
    ckpt = open_checkpoint(Path(checkpoint))
    if not any(name.startswith(V + ".") for name in ckpt.tensors):
        raise CheckpointError(f"{ckpt.path}: no vision weights ({V}.*): this checkpoint cannot make an mmproj")
    vision = parse_vision_config(ckpt)

    def plan(ffn: int | None = None, merger_ffn: int | None = None) -> tuple[list[PlannedTensor], list[str]]:
        try:
            return plan_tensors(
                ckpt.tensors.values(),
                mmproj_rules(mode, ffn, merger_ffn),
                vision,
                n_blocks=vision.num_hidden_layers,
                skip_prefixes=mmproj_skip_prefixes(mode),
            )
        except ToolkitError as err:
            raise type(err)(f"{ckpt.path}: {err}") from err

    planned, skipped = plan()
    out_type = resolve_outtype(outtype, planned, MMPROJ_OUTTYPES)
    ffn, merger_ffn = mlp_widths(vision.intermediate_size, pad_mlp_to or block_size(out_type))
    if (ffn, merger_ffn) != (vision.intermediate_size, 4 * vision.intermediate_size):
        planned, skipped = plan(ffn, merger_ffn)
    check_block_rows(planned, out_type, ckpt.path)
    loras = prepare(list(loras), ckpt)
    planned = attach(planned, loras, vision=True)
    tensors = [tensor_out(p, out_type) for p in planned]
    return MMProjPlan(ckpt, vision, mode, out_type, tensors, plan_rows(planned, tensors), skipped, ffn, loras)


def mlp_widths(intermediate: int, block: int) -> tuple[int, int]:
    """(encoder MLP width, window-merger MLP width) rounded up to whole blocks of `block` values.

    The type's block: 1 for float types (no padding), 32, or 256 for a k-quant, so that ffn_down (whose
    rows are the MLP width) takes the k-quant itself rather than its fallback.
    """
    # The merger's MLP stays 4 x the encoder's, padded or not: the crash checks derive it from the header's width.
    width = padded_width(intermediate, block)
    return width, 4 * width


def check_block_rows(planned: list[PlannedTensor], out_type: Q, where: Path) -> None:
    """Refuse, before anything is written, a block type whose blocks do not fit some matrix's rows.

    The MLP width is padded (mlp_widths); any other row width (attention, merger, projector) is the
    model's hidden size, which zeros cannot pad without changing the output.
    """
    if block_size(out_type) == 1:
        return
    types = {p.gguf_name: ggml_type_for(p, out_type) for p in planned if p.dtype == "outtype"}
    # A float type here is ggml_type_for's F16 fallback: refused, not written silently.
    bad = [
        f"{p.gguf_name} (rows of {p.gguf_shape[-1]})"
        for p in planned
        if p.gguf_name in types
        and (block_size(types[p.gguf_name]) == 1 or p.gguf_shape[-1] % block_size(types[p.gguf_name]))
    ]
    need = block_size(K_FALLBACK.get(out_type, out_type))
    if bad:
        raise ToolkitError(
            f"{where}: --outtype {out_type.name.lower()} needs rows that are a multiple of {need}, and only the "
            f"MLP width can be zero-padded; not: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. "
            "Use f16, bf16 or f32"
        )


def write_mmproj(
    plan: MMProjPlan, out: Path, *, overwrite: bool = False, name: str | None = None, progress: Progress | None = None
) -> MMProjResult:
    """Write a planned mmproj GGUF atomically (temporary file, then rename)."""
    t0 = time.perf_counter()
    kvs = [
        *general_kvs(plan.checkpoint, file_type=int(FILE_TYPES[plan.out_type]), gguf_type="mmproj", name=name),
        *lora_kvs(plan.loras, vision=True),
        *clip_kvs(plan.vision, plan.mode, ffn_width=plan.ffn_width),
    ]
    n_bytes = write_gguf(Path(out), ARCH, kvs, plan.tensors, overwrite=overwrite, progress=progress)
    return MMProjResult(Path(out), plan, n_bytes, time.perf_counter() - t0)


def convert_mmproj(
    checkpoint: Path,
    out: Path,
    *,
    mode: str = DEFAULT_MODE,
    outtype: str = MMPROJ_TYPE,
    overwrite: bool = False,
    progress: Progress | None = None,
    loras: Sequence[Adapter] = (),
) -> MMProjResult:
    """plan_mmproj + write_mmproj.

    Example:
        >>> convert_mmproj(Path("MiniCPM-V-4_6"), Path("mmproj-16x-f16.gguf"), mode="16x").summary()
    """
    check_output(Path(out), overwrite=overwrite)
    return write_mmproj(
        plan_mmproj(checkpoint, mode=mode, outtype=outtype, loras=loras), out, overwrite=overwrite, progress=progress
    )


def mode_paths(out: Path, modes: list[str]) -> dict[str, Path]:
    """Output path per mode: `out` itself for one mode; `NAME-16x.gguf`, `NAME-4x.gguf` for several."""
    if len(modes) == 1:
        return {modes[0]: Path(out)}
    out = Path(out)
    return {m: out.with_name(f"{out.stem}-{m}{out.suffix or '.gguf'}") for m in modes}
