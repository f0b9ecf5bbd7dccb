"""A build folder in place of GGUF paths: the LM and the mmproj of each mode, read from its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError
from .manifest import load_manifest


@dataclass(frozen=True)
class BuildFiles:
    lm: Path
    mmprojs: dict[str, Path]  # by mode, in the order the build wrote them


def build_files(folder: Path) -> BuildFiles:
    """The GGUFs a `build` folder holds: the final LM (quantized if it was) and each mmproj by mode.

    Raises:
        ManifestError: no manifest.json, a manifest without an LM, or a listed file that is missing.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        raise ManifestError(f"{folder}: no manifest.json: not a build folder (make one with `minicpmv-gguf build`)")
    stages = manifest.stages
    lm_stage = stages.get("quantize") or stages.get("convert")
    if lm_stage is None or not lm_stage.outputs:
        raise ManifestError(f"{folder / 'manifest.json'}: no LM GGUF recorded; run `minicpmv-gguf build` again")
    mmprojs = {
        key.removeprefix("mmproj-"): folder / stage.outputs[0]
        for key, stage in stages.items()
        if key.startswith("mmproj-") and stage.outputs
    }
    files = BuildFiles(folder / lm_stage.outputs[0], mmprojs)
    for path in [files.lm, *files.mmprojs.values()]:
        if not path.is_file():
            raise ManifestError(f"{path}: listed in {folder / 'manifest.json'} but missing; rebuild the folder")
    return files


def gguf_paths(path: Path, mmprojs: tuple[Path, ...] = ()) -> tuple[Path, tuple[Path, ...]]:
    """(LM, mmprojs) for a command's first argument: a build folder (its files), or an LM GGUF and the given mmprojs."""
    path = Path(path)
    if not path.is_dir():
        return path, tuple(mmprojs)
    if mmprojs:
        raise ManifestError(f"{path}: a build folder brings its own mmproj files; drop --mmproj")
    files = build_files(path)
    return files.lm, tuple(files.mmprojs.values())
