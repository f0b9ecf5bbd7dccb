"""The language-model converter: a MiniCPM-V 4.6 checkpoint -> a `qwen35` LM GGUF."""

from .convert import ConvertResult, LMPlan, PlanRow, convert_lm, plan_lm, write_lm

__all__ = ["ConvertResult", "LMPlan", "PlanRow", "convert_lm", "plan_lm", "write_lm"]
