"""The mmproj converter: a MiniCPM-V 4.6 checkpoint's vision half -> a `clip` GGUF per downsample mode."""

from .config import MODES, VisionConfig
from .convert import MMProjPlan, MMProjResult, convert_mmproj, mode_paths, plan_mmproj, write_mmproj

__all__ = [
    "MODES",
    "MMProjPlan",
    "MMProjResult",
    "VisionConfig",
    "convert_mmproj",
    "mode_paths",
    "plan_mmproj",
    "write_mmproj",
]
