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
from ..spec import DEFAULT_MODE, MODES
from ..tensor_plan import FILE_TYPES, PlanRow, plan_rows, plan_tensors, resolve_outtype, tensor_out
from .config import VisionConfig, parse_vision_config
from .metadata import ARCH, clip_kvs
from .tensor_map import V, mmproj_rules, mmproj_skip_prefixes


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
    checkpoint: Path, *, mode: str = DEFAULT_MODE, outtype: str = "f16", loras: Sequence[Adapter] = ()
) -> MMProjPlan:
    """Validate a checkpoint's vision half and plan the mmproj GGUF of one mode; reads headers only.

    Args:
        mode: "16x" (default: 4x fewer visual tokens than 4x) or "4x" (for small text and fine detail).
        outtype: "f16" (default), "f32", "bf16", "q8_0", or "auto" (the checkpoint's own type).
        loras: adapters (lora.open_adapter) whose vision, merger and projector targets are merged.
    Raises:
        ToolkitError (CheckpointError, TensorMapError, LoraError): user-fixable problems.
    """
    if mode not in MODES:
        raise ToolkitError(f"mode {mode!r}: choose {' or '.join(MODES)}")
    ckpt = open_checkpoint(Path(checkpoint))
    if not any(name.startswith(V + ".") for name in ckpt.tensors):
        raise CheckpointError(f"{ckpt.path}: no vision weights ({V}.*): this checkpoint cannot make an mmproj")
    vision = parse_vision_config(ckpt)
    try:
        planned, skipped = plan_tensors(
            ckpt.tensors.values(),
            mmproj_rules(mode),
            vision,
            n_blocks=vision.num_hidden_layers,
            skip_prefixes=mmproj_skip_prefixes(mode),
        )
    except ToolkitError as err:
        raise type(err)(f"{ckpt.path}: {err}") from err
    loras = prepare(list(loras), ckpt)
    planned = attach(planned, loras, vision=True)
    out_type = resolve_outtype(outtype, planned)
    tensors = [tensor_out(p, out_type) for p in planned]
    return MMProjPlan(ckpt, vision, mode, out_type, tensors, plan_rows(planned, tensors), skipped, loras)


def write_mmproj(
    plan: MMProjPlan, out: Path, *, overwrite: bool = False, name: str | None = None, progress: Progress | None = None
) -> MMProjResult:
    """Write a planned mmproj GGUF atomically (temporary file, then rename)."""
    t0 = time.perf_counter()
    kvs = [
        *general_kvs(plan.checkpoint, file_type=int(FILE_TYPES[plan.out_type]), gguf_type="mmproj", name=name),
        *lora_kvs(plan.loras, vision=True),
        *clip_kvs(plan.vision, plan.mode),
    ]
    n_bytes = write_gguf(Path(out), ARCH, kvs, plan.tensors, overwrite=overwrite, progress=progress)
    return MMProjResult(Path(out), plan, n_bytes, time.perf_counter() - t0)


def convert_mmproj(
    checkpoint: Path,
    out: Path,
    *,
    mode: str = DEFAULT_MODE,
    outtype: str = "f16",
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
