"""build: a checkpoint (directory or hub repo id) -> LM GGUF, quantized LM, mmproj per mode, Ollama package, manifest.

Stages whose outputs are present with the size and sha256 the manifest records (and whose options did
not change) are skipped; the manifest is rewritten after each stage, so an interrupted build resumes.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import spec
from ..checkpoint import open_checkpoint
from ..convert_hf_to_gguf import plan_lm, write_lm
from ..errors import OllamaError, OptionError, OutputError, QuantizeError
from ..lora import Adapter, prepare
from ..mmproj import MODES, plan_mmproj, write_mmproj
from ..ollama import DEFAULT_NAME, package_ollama
from ..ollama.modelfile import _NAME as OLLAMA_NAME
from ..quantize.quantize import NEEDS_IMATRIX, resolve_type
from ..runtime.headers import gguf_problems
from ..tensor_plan import MMPROJ_OUTTYPES as MMPROJ_TYPES
from . import manifest as mf
from .progress import Progress, StageLog
from .quantize_proc import quantize_in_child
from .records import MANIFEST, BuildOptions, FileRecord, Manifest, SourceRecord, StageRecord, VerifyRecord
from .result import BuildResult
from .source import Source, fingerprint, resolve_source, sha256_file
from .workdir import BuildLock, check_out_dir, clean_partials, has_content, refuse_foreign

FLOAT_QUANTS = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # --quant values that need no quantizer
LM_OUTTYPES = ("auto", "f32", "f16", "bf16")
MMPROJ_OUTTYPES = ("auto", *MMPROJ_TYPES)
PACKAGE = "ollama"


def build(
    source: str | Path,
    out_dir: Path,
    *,
    quant: str = "Q4_K_M",
    modes: tuple[str, ...] = ("16x",),
    lm_outtype: str = "auto",
    mmproj_outtype: str = spec.BUILD_MMPROJ_TYPE,
    keep_unquantized: bool = False,
    ollama: bool = True,
    ollama_name: str = DEFAULT_NAME,
    revision: str | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    loras: tuple[Adapter, ...] = (),
) -> BuildResult:
    """Build (or resume) everything needed to run MiniCPM-V 4.6 from `source` in `out_dir`.

    Args:
        source: a local checkpoint directory, or a Hugging Face repo id (owner/name; needs huggingface_hub).
        out_dir: created if missing; an earlier build of the same source is resumed, anything else refused.
        quant: the LM's llama.cpp type (Q4_K_M default; F16, BF16 or F32 skip quantization).
        modes: the mmproj modes, "16x" and/or "4x"; the first goes into the Ollama package.
        lm_outtype: the unquantized LM GGUF that is quantized ("auto": the checkpoint's own float type).
        mmproj_outtype: the mmproj GGUFs' type.
        keep_unquantized: keep the unquantized LM GGUF (deleted after quantization otherwise).
        ollama, ollama_name: write the Ollama package (links to the GGUFs) and the model name it creates.
        revision: a hub branch, tag or commit.
        force: build into a directory that holds something else, and redo every stage.
        progress: receives a StageEvent per stage start, advance, skip and finish.
        loras: PEFT LoRA adapters (lora.open_adapter) merged into the LM and the mmproj files; recorded in
            manifest.json, and a changed adapter file reruns the stages it touches.
    Raises:
        ToolkitError: OptionError, QuantizeError or OllamaError (an option), SourceError, OutputError (foreign
            or locked directory), ManifestError, CheckpointError, ...
    """
    t0 = time.perf_counter()
    modes = modes.split(",") if isinstance(modes, str) else modes  # "16x,4x" as the CLI spells it
    options = BuildOptions(
        quant=resolve_type(quant),
        modes=tuple(dict.fromkeys(m.strip() for m in modes)),
        lm_outtype=lm_outtype,
        mmproj_outtype=mmproj_outtype,
        keep_unquantized=keep_unquantized,
        ollama=ollama,
        ollama_name=ollama_name,
        loras=tuple(ad.record() for ad in loras),
    )
    _check_options(options)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not force:
        refuse_foreign(out_dir, mf.load_manifest(out_dir), None, force=False)  # before any download or hashing
    src = resolve_source(source, revision=revision)
    if loras:
        prepare(list(loras), open_checkpoint(src.path))  # an adapter for another base: refused before any write
    check_out_dir(out_dir, src.path)
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    try:
        with BuildLock(out_dir):
            return _Run(out_dir, src, options, threads, force, progress or (lambda e: None), loras).all(t0)
    except BaseException:
        if created and not (out_dir / MANIFEST).exists() and not has_content(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing but our lock: leave no trace
        raise


def _check_options(o: BuildOptions) -> None:
    if o.quant in NEEDS_IMATRIX:
        raise QuantizeError(
            f"{o.quant} needs an importance matrix, which build does not make; use `minicpmv-gguf "
            "imatrix` and `quantize --imatrix` on a build made with --keep-unquantized"
        )
    if not o.modes or any(m not in MODES for m in o.modes):
        raise OptionError(f"modes {','.join(o.modes) or '(none)'}: choose 16x, 4x or 16x,4x")
    if o.lm_outtype not in LM_OUTTYPES:
        raise OptionError(f"LM outtype {o.lm_outtype!r}: choose one of {', '.join(LM_OUTTYPES)}")
    if o.mmproj_outtype not in MMPROJ_OUTTYPES:
        raise OptionError(f"mmproj outtype {o.mmproj_outtype!r}: choose one of {', '.join(MMPROJ_OUTTYPES)}")
    if not OLLAMA_NAME.fullmatch(o.ollama_name):
        raise OllamaError(
            f"Ollama name {o.ollama_name!r}: letters, digits, '_', '-' and '.', optionally namespace/name:tag"
        )


class _Run:
    """One build: the stages in order, the earlier build's manifest and the one being made, and the stage log."""

    def __init__(
        self,
        out: Path,
        src: Source,
        options: BuildOptions,
        threads: int | None,
        force: bool,
        progress: Progress,
        loras: tuple[Adapter, ...] = (),
    ) -> None:
        self.out, self.src, self.options, self.threads, self.force = out, src, options, threads, force
        self.loras = list(loras)  # opened adapters; options.loras holds their records
        self.final_float = options.quant in FLOAT_QUANTS  # no quantizer: the converted LM is the final one
        stages = (
            ["check", "convert"]
            + ([] if self.final_float else ["quantize"])
            + [f"mmproj-{m}" for m in options.modes]
            + ([PACKAGE] if options.ollama else [])
        )
        self.log = StageLog(stages, progress)
        self.removed: list[str] = []  # leftovers and outdated files deleted, for the result
        # The new manifest, record by record; the check stage fills in the source and what is up to date.
        self.tools = mf.tool_versions()
        self.created = mf.timestamp()  # an earlier build's own time once the check finds one
        self.source: SourceRecord | None = None
        self.stages: dict[str, StageRecord] = {}
        self.files: dict[str, FileRecord] = {}
        self.verify: VerifyRecord | None = None
        self.old: Manifest | None = None  # the earlier build that may be resumed (None with --force)
        self.prior_files: set[str] = set()  # the earlier build's files: ours to remove when not carried over
        self.up_to_date: set[str] = set()

    def all(self, t0: float) -> BuildResult:
        self._check()
        lm = self._lm()
        mmprojs = {m: self._mmproj(m) for m in self.options.modes}
        package = self._package(lm, mmprojs[self.options.modes[0]]) if self.options.ollama else None
        if self.old and self.old.verify and self.old.verify.describes(self.files):
            self.verify = self.old.verify  # it still describes these very files
        self._save()
        removed = [n for n in self.removed if n not in self.files]
        return BuildResult(
            self.out,
            self.src,
            lm,
            mmprojs,
            package,
            self.options.ollama_name,
            self.log.reports,
            removed,
            time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ stages
    def _check(self) -> None:
        """Stage 1: fingerprint the source, refuse a foreign directory, find the stages that are up to date."""
        self.log.start("check", f"source {self.src.describe()}")
        self.removed += clean_partials(self.out)
        try:
            old = mf.load_manifest(self.out)
        except OutputError:
            if not self.force:
                raise
            old = None
        same_path = old is not None and old.source.path == str(self.src.path)
        old_bytes = sum(r.size for r in old.files.values() if r.link_to is None) if old else 0
        hashed = [0, 0]  # bytes hashed so far, source bytes to hash

        def step(done: int, total: int) -> None:
            hashed[:] = done, total
            self.log.advance("check", done, total + old_bytes)

        fp, files = fingerprint(self.src.path, old.source.files if same_path else None, step)
        refuse_foreign(self.out, old, fp, force=self.force)
        self.old = None if self.force else old  # --force: nothing is up to date
        self.prior_files = set(old.files) if old else set()
        self.source = SourceRecord(
            kind=self.src.kind,
            path=str(self.src.path),
            repo_id=self.src.repo_id,
            revision=self.src.revision,
            describe=self.src.describe(),
            fingerprint=fp,
            files=files,
        )
        if self.old:
            self.created = self.old.created
        verified = self.log.counter("check", hashed[1] + old_bytes, start=hashed[0])
        for key in self.log.stages[1:]:  # in order: the package's options name the GGUFs' hashes
            if self._still_valid(key, verified):
                self.up_to_date.add(key)
                self.stages[key] = self.old.stages[key]
                self.files.update({n: self.old.files[n] for n in self.old.stages[key].outputs})
        self._remove_outdated()
        self._save()
        self.log.finish("check", f"{len(self.up_to_date)} of {len(self.log.stages) - 1} stages up to date")

    def _lm(self) -> Path:
        """Stages 2-3: the LM GGUF, converted and (unless --quant is a float type) quantized."""
        keep = self.options.keep_unquantized
        quantized_ok = self.final_float or "quantize" in self.up_to_date
        if "convert" in self.up_to_date:
            converted = self._skip("convert")
        elif quantized_ok and not self.final_float and not keep:
            converted = None
            self.log.skip("convert", f"not needed: {self._outputs('quantize')[0]} is up to date", "not needed")
        else:
            converted = self._run("convert", self._convert)
        if self.final_float:
            return converted
        lm = self._skip("quantize") if quantized_ok else self._run("quantize", lambda: self._quantize(converted))
        if converted is not None and not keep:
            converted.unlink(missing_ok=True)  # only now: an interrupted quantization resumes from it
            self.files.pop(converted.name, None)
            self.stages.pop("convert", None)
            self._save()
        return lm

    def _convert(self) -> list[Path]:
        plan = plan_lm(self.src.path, outtype=_lm_outtype(self.options), loras=self.loras)
        out = self.out / f"lm-{plan.out_type.name}.gguf"
        write_lm(
            plan,
            out,
            overwrite=True,
            name=self.src.name,
            source_url=self.src.url,
            progress=self.log.counter("convert", 2 * plan.n_bytes),
        )
        return [out]

    def _quantize(self, converted: Path) -> list[Path]:
        out = self.out / f"lm-{self.options.quant}.gguf"
        quantize_in_child(
            converted,
            out,
            qtype=self.options.quant,
            threads=self.threads,
            progress=lambda done, total: self.log.advance("quantize", done, 2 * total),
        )
        return [out]

    def _mmproj(self, mode: str) -> Path:
        key = f"mmproj-{mode}"
        if key in self.up_to_date:
            return self._skip(key)

        def run() -> list[Path]:
            plan = plan_mmproj(self.src.path, mode=mode, outtype=self.options.mmproj_outtype, loras=self.loras)
            write_mmproj(
                plan,
                self.out / f"{key}.gguf",
                overwrite=True,
                name=self.src.name,
                progress=self.log.counter(key, 2 * plan.n_bytes),
            )
            return [self.out / f"{key}.gguf"]

        return self._run(key, run)

    def _package(self, lm: Path, mmproj: Path) -> Path:
        if PACKAGE in self.up_to_date:
            self._skip(PACKAGE)
            return self.out / PACKAGE

        def run() -> list[Path]:
            pkg = package_ollama(
                lm, mmproj, self.out / PACKAGE, name=self.options.ollama_name, link=True, overwrite=True
            )
            return [pkg.modelfile, pkg.out / lm.name, pkg.out / mmproj.name]

        self._run(PACKAGE, run)
        return self.out / PACKAGE

    # ------------------------------------------------------------------ bookkeeping
    def _run(self, key: str, work: Callable[[], list[Path]]) -> Path:
        """Run a stage, hash its outputs, record it in the manifest."""
        self.log.start(key, _describe(key, self.options))
        paths = work()
        self.files.update({self._rel(p): self._record(key, p) for p in paths})
        self.stages[key] = StageRecord(self._params(key), tuple(map(self._rel, paths)))
        self._save()
        seconds = self.log.finish(key, ", ".join(map(self._rel, paths)))
        self.stages[key] = replace(self.stages[key], seconds=round(seconds, 3))
        return paths[0]

    def _record(self, key: str, path: Path) -> FileRecord:
        if key == PACKAGE and path.name != "Modelfile":  # a hard link to a GGUF of this build: no second hash
            return replace(self.files[path.name], stage=key, link_to=path.name)
        size = path.stat().st_size
        return mf.file_record(path, sha256_file(path, self.log.counter(key, 2 * size, start=size)), stage=key)

    def _skip(self, key: str) -> Path:
        outputs = self._outputs(key)
        self.log.skip(key, f"{', '.join(outputs)} match{'es' if len(outputs) == 1 else ''} the manifest")
        return self.out / outputs[0]

    def _params(self, key: str) -> dict[str, Any]:
        """What a stage's outputs depend on: a change reruns the stage."""
        o, fp, tools = self.options, self.source.fingerprint, self.tools.to_json()
        converter = {k: tools[k] for k in ("minicpmv_gguf", "gguf")}  # a new converter may write other bytes
        # Only with adapters: a build without any keeps 0.1.0's params, so its stages stay up to date.
        lora = {"loras": [{"sha256": r["sha256"], "scale": r["scale"]} for r in o.loras]} if o.loras else {}
        if key == "convert":
            return {"outtype": _lm_outtype(o), "source": fp, "tools": converter, **lora}
        if key == "quantize":
            return {
                "qtype": o.quant,
                "from": o.lm_outtype,
                "source": fp,
                "tools": {**converter, **{k: tools[k] for k in ("llama-cpp-python", "libllama")}},
                **lora,
            }
        if key.startswith("mmproj-"):
            mode = key.removeprefix("mmproj-")
            return {"mode": mode, "outtype": o.mmproj_outtype, "source": fp, "tools": converter, **lora}
        lm, mm = self._outputs("convert" if self.final_float else "quantize"), self._outputs(f"mmproj-{o.modes[0]}")
        return {
            "name": o.ollama_name,
            "lm": self.files[lm[0]].sha256 if lm else None,
            "mmproj": self.files[mm[0]].sha256 if mm else None,
        }

    def _outputs(self, key: str) -> tuple[str, ...]:
        stage = self.stages.get(key)
        return stage.outputs if stage else ()

    def _still_valid(self, key: str, progress: Callable[[int], None]) -> bool:
        """The old build's record of this stage has today's options and its outputs are intact."""
        stage = self.old.stages.get(key) if self.old else None
        if stage is None or stage.params != self._params(key):
            return False
        for name in stage.outputs:
            record, path = self.old.files.get(name), self.out / name
            if record is not None and record.link_to is not None:  # a package link must be this build's own file
                target = self.out / record.link_to
                if not (path.exists() and target.exists() and path.samefile(target)):
                    return False
            elif not mf.matches(path, record, progress):
                return False
            elif path.suffix == ".gguf" and gguf_problems(path):  # intact but unusable: redo the stage
                return False
        return True

    def _remove_outdated(self) -> None:
        """Delete the old build's files that this build does not carry over (they are redone or dropped)."""
        for name in sorted(self.prior_files - set(self.files)):
            path = self.out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
                self.removed.append(name)
        pkg = self.out / PACKAGE
        if pkg.is_dir() and not any(pkg.iterdir()):
            pkg.rmdir()

    def _save(self) -> None:
        manifest = Manifest(
            self.created, self.tools, self.source, self.options, dict(self.stages), dict(self.files), verify=self.verify
        )
        mf.save_manifest(self.out, manifest)

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.out))


def _lm_outtype(o: BuildOptions) -> str:
    """The converted LM's type: the float --quant itself, else --lm-outtype."""
    return FLOAT_QUANTS.get(o.quant, o.lm_outtype)


def _describe(key: str, o: BuildOptions) -> str:
    if key == "convert":
        return f"LM to GGUF ({_lm_outtype(o)})"
    if key == "quantize":
        return f"LM to {o.quant} with llama.cpp's quantizer"
    if key.startswith("mmproj-"):
        return f"vision tower to GGUF ({key.removeprefix('mmproj-')}, {o.mmproj_outtype})"
    return f"Ollama package {o.ollama_name!r} (links, not copies)"
