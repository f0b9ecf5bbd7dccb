"""What a build did: the files to run, the stages (run or skipped), and the commands to use them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .records import MANIFEST
from .source import Source


@dataclass(frozen=True)
class StageReport:
    """One stage of a build: "ran", "skipped" (outputs matched the manifest) or "not needed"."""

    name: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class BuildResult:
    """The build directory's LM GGUF, mmproj GGUF per mode and Ollama package, and how they came about."""

    out_dir: Path
    source: Source
    lm: Path
    mmprojs: dict[str, Path]
    ollama: Path | None
    ollama_name: str
    stages: list[StageReport]
    removed: list[str]  # leftovers of interrupted runs and outputs of an earlier build that this one dropped
    seconds: float

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST

    def commands(self) -> dict[str, str]:
        """The `run`, `chat` and `ollama create` commands for the built files."""
        q = shlex.quote
        model = " ".join([q(str(self.lm))] + [f"--mmproj {q(str(p))}" for p in self.mmprojs.values()])
        out = {
            "run": f"minicpmv-gguf run {model} --image IMAGE -p 'What is in the picture?'",
            "chat": f"minicpmv-gguf chat {model}",
        }
        if self.ollama is not None:
            out["ollama"] = f"ollama create {q(self.ollama_name)} -f {q(str(self.ollama / 'Modelfile'))}"
        return out

    def summary(self) -> str:
        ran = [s.name for s in self.stages if s.status == "ran" and s.name != "check"]
        skipped = [s.name for s in self.stages if s.status != "ran"]
        lines = [
            f"built {self.out_dir} from {self.source.describe()} in {self.seconds:.1f} s: "
            f"{len(ran)} stage(s) run ({', '.join(ran) or 'none'}), {len(skipped)} skipped "
            f"({', '.join(skipped) or 'none'})"
        ]
        if self.removed:
            lines.append(f"removed: {', '.join(self.removed)}")
        width = max(len(k) for k in self.commands())
        lines += [f"  {k + ':':<{width + 1}} {v}" for k, v in self.commands().items()]
        return "\n".join(lines)
