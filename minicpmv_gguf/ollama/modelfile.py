"""An Ollama package: a folder with the LM GGUF, the mmproj GGUF and a Modelfile that imports both.

render_modelfile() writes the Modelfile text; package_ollama() checks the two GGUFs' headers, builds
the folder in a hidden temporary folder beside the target and renames it into place, so an error or
Ctrl-C never leaves a half-written package under the final name.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import OllamaError, OutputError
from ..spec import DEFAULT_N_CTX, LM_ARCH, MODEL_ID, PROJECTOR, REPEAT_PENALTY, STOP_STRINGS, TEMPERATURE, TOP_K, TOP_P
from .validate import Command, check_modelfile, classify_gguf, parse_modelfile

log = logging.getLogger(__name__)

# The first Ollama that runs GGUFs on llama-server, whose llama.cpp knows qwen35 and the minicpmv4_6 projector.
OLLAMA_MIN_VERSION = "0.30.0"
DEFAULT_NAME = MODEL_ID
DEFAULT_NUM_CTX = DEFAULT_N_CTX
# OpenBMB's recommended sampling for MiniCPM-V 4.6 (its llama.cpp guide), not generation_config.json's.
SAMPLING = (("temperature", TEMPERATURE), ("top_p", TOP_P), ("top_k", TOP_K), ("repeat_penalty", REPEAT_PENALTY))
HEADER = (
    f"# MiniCPM-V 4.6 for Ollama >= {OLLAMA_MIN_VERSION}, written by minicpmv-gguf {__version__}.",
    "#   ollama create NAME -f Modelfile",
    "# Ollama may render prompts with the LM GGUF's own chat template instead of TEMPLATE (it lists",
    '# thinking and tools): send "think": false (ollama run NAME --think=false) and both give this',
    "# TEMPLATE's prompt. OLLAMA_GO_TEMPLATE=1 on the server forces TEMPLATE.",
)

# The model's ChatML in non-thinking mode, as its Jinja template renders it with enable_thinking=false.
# Ollama has already put each image's [img-N] marker into .Content. A last assistant message is a
# prefill, left open as llama-server leaves it. No .Thinking and no .Tools on purpose: Ollama turns
# thinking on by default for a template that shows it, and this checkpoint must not think.
CHAT_TEMPLATE = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if $last }}<think>

</think>

{{ end }}{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if or (eq .Role "system") (eq .Role "user") }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
<think>

</think>

{{ end }}
{{- end }}"""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*){0,2}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")


@dataclass(frozen=True)
class OllamaPackage:
    """What package_ollama wrote."""

    out: Path
    name: str
    lm_file: str
    mmproj_file: str
    placed: tuple[str, str]  # how each GGUF got there: "copied", "hard-linked" or "symlinked"
    n_bytes: int

    @property
    def modelfile(self) -> Path:
        return self.out / "Modelfile"

    def create_command(self) -> str:
        return f"ollama create {shlex.quote(self.name)} -f {shlex.quote(str(self.modelfile))}"

    def summary(self) -> str:
        return (
            f"wrote {self.out}/: Modelfile, {self.lm_file} ({self.placed[0]}), {self.mmproj_file} "
            f"({self.placed[1]}), {self.n_bytes / 1e6:.1f} MB"
        )


def render_modelfile(
    lm_file: str,
    mmproj_file: str,
    *,
    license: str | None = None,
    system: str | None = None,
    num_ctx: int = DEFAULT_NUM_CTX,
    adapter_files: tuple[str, ...] = (),
) -> str:
    """The Modelfile text for a package holding `lm_file`, `mmproj_file` (and LoRA `adapter_files`) beside it.

    Example:
        >>> print(render_modelfile("lm.gguf", "mmproj.gguf", license="apache-2.0"))
    """
    wanted = [
        Command("from", f"./{lm_file}", 0),
        Command("from", f"./{mmproj_file}", 0),
        *(Command("adapter", f"./{a}", 0) for a in adapter_files),
        Command("requires", OLLAMA_MIN_VERSION, 0),
        Command("template", CHAT_TEMPLATE, 0),
        *(Command("parameter", s, 0, "stop") for s in STOP_STRINGS),
        *(Command("parameter", str(v), 0, k) for k, v in SAMPLING),
        Command("parameter", str(num_ctx), 0, "num_ctx"),
    ]
    if system:
        wanted.append(Command("system", system, 0))
    if license:
        wanted.append(Command("license", license, 0))
    for c in wanted:
        _check_round_trip(c)
    return "".join(f"{line}\n" for line in (*HEADER, *map(_format, wanted)))


def _format(c: Command) -> str:
    if c.instruction == "parameter":
        value = f'"{c.value}"' if c.key == "stop" else c.value
        return f"PARAMETER {c.key} {value}"
    if c.instruction in ("template", "system", "license"):
        return f'{c.instruction.upper()} """{c.value}"""'
    return f"{c.instruction.upper()} {c.value}"


def _check_round_trip(c: Command) -> None:
    """Ollama must read back exactly what was meant: a \"\"\" at a line end or a control character would not survive."""
    try:
        got = parse_modelfile(f"FROM ./x\n{_format(c)}\n")[-1]
    except OllamaError:
        got = None
    if got is None or (got.instruction, got.key, got.value) != (c.instruction, c.key, c.value):
        raise OllamaError(
            f"{c.instruction.upper()} {c.value[:50]!r}: Ollama would not read it back unchanged "
            '(a line ending in """, or a control character)'
        )


def package_ollama(
    lm: Path,
    mmproj: Path,
    out: Path,
    *,
    name: str = DEFAULT_NAME,
    link: bool = False,
    system: str | None = None,
    num_ctx: int = DEFAULT_NUM_CTX,
    overwrite: bool = False,
    adapters: tuple[Path, ...] = (),
) -> OllamaPackage:
    """Write `out/` with both GGUFs (copied, or linked with link=True) and a Modelfile for `ollama create`.

    Args:
        lm: the LM GGUF (qwen35), any quantization.
        mmproj: one mmproj GGUF (clip, projector minicpmv4_6), 16x or 4x.
        out: the package folder; it must not exist (or be empty) unless overwrite=True.
        name: the Ollama model name the create command uses.
        link: hard-link the GGUFs, or symlink them when a hard link is impossible (another file system).
        system: a default system prompt (Modelfile SYSTEM); surrounding whitespace is dropped, as the
            model's template trims it.
        num_ctx: the context length Ollama loads the model with.
        overwrite: replace an existing `out`.
        adapters: llama.cpp LoRA adapter GGUFs (`minicpmv-gguf lora`), placed beside the GGUFs as ADAPTER lines.

    Raises:
        OllamaError: the GGUFs are not MiniCPM-V 4.6's LM and mmproj, or the name is not an Ollama name.
        OutputError: `out` cannot or must not be written.

    Example:
        >>> package_ollama(Path("lm-Q4_K_M.gguf"), Path("mmproj-16x.gguf"), Path("minicpm-v4.6")).create_command()
        'ollama create minicpm-v4.6 -f minicpm-v4.6/Modelfile'
    """
    lm, mmproj, out = Path(lm), Path(mmproj), Path(out)
    if not _NAME.fullmatch(name):
        raise OllamaError(
            f"--name {name!r}: an Ollama model name is letters, digits, '_', '-' and '.', "
            "optionally as namespace/name:tag"
        )
    if num_ctx < 1:
        raise OllamaError(f"num_ctx {num_ctx}: must be a positive number of tokens")
    license = _check_pair(lm, mmproj)
    adapters = tuple(Path(a) for a in adapters)
    _check_adapters(adapters, [lm.name, mmproj.name])
    _check_out(out, [lm, mmproj, *adapters], overwrite=overwrite)
    text = render_modelfile(
        lm.name,
        mmproj.name,
        license=license,
        system=(system or "").strip() or None,
        num_ctx=num_ctx,
        adapter_files=tuple(a.name for a in adapters),
    )
    tmp = out.parent / f".{out.name}.{os.getpid()}.part"
    try:
        tmp.mkdir()
        placed = (_place(lm, tmp / lm.name, link), _place(mmproj, tmp / mmproj.name, link))
        for a in adapters:
            _place(a, tmp / a.name, link)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        errors = [p.format(tmp / "Modelfile") for p in check_modelfile(tmp / "Modelfile") if not p.warning]
        assert not errors, errors  # our own output must pass our own validator
        _move_into_place(tmp, out)
    except OSError as err:  # ENOSPC, EACCES, EXDEV...: the output side
        raise OutputError(f"{out}: cannot write: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.debug("packaged %s and %s for Ollama in %s", lm, mmproj, out)
    return OllamaPackage(out, name, lm.name, mmproj.name, placed, lm.stat().st_size + mmproj.stat().st_size)


def _check_adapters(adapters: tuple[Path, ...], taken: list[str]) -> None:
    """Each adapter is a qwen35 LoRA adapter GGUF with a file name of its own in the package."""
    for a in adapters:
        if not a.is_file():
            raise OllamaError(f"{a}: LoRA adapter GGUF not found")
        kind = classify_gguf(a)
        if kind.kind != "adapter" or kind.architecture != LM_ARCH:
            raise OllamaError(f"{a}: not a {LM_ARCH} LoRA adapter GGUF (minicpmv-gguf lora writes it)")
        if a.name in taken:
            raise OllamaError(f"{a}: another file of the package has the name {a.name}")
        taken.append(a.name)


def _check_pair(lm: Path, mmproj: Path) -> str | None:
    """Refuse anything but MiniCPM-V 4.6's LM + mmproj; return the LM's general.license (may be None)."""
    for path, what in ((lm, "LM GGUF"), (mmproj, "--mmproj")):
        if not path.is_file():
            raise OllamaError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    if lm.name == mmproj.name:
        raise OllamaError(f"{lm} and {mmproj}: the two GGUFs need different file names in one folder")
    lm_kind, mm_kind = classify_gguf(lm), classify_gguf(mmproj)
    if lm_kind.kind == "projector" and mm_kind.kind == "model":
        raise OllamaError(f"{lm} is the projector and {mmproj} the LM: swap them (LM first, then --mmproj)")
    if lm_kind.kind != "model" or lm_kind.architecture != LM_ARCH:
        raise OllamaError(
            f"{lm}: a {lm_kind.architecture or 'unknown'} {lm_kind.kind} GGUF, not MiniCPM-V 4.6's "
            f"{LM_ARCH} LM GGUF (minicpmv-gguf convert writes it)"
        )
    if mm_kind.kind != "projector" or mm_kind.kvs.get("clip.projector_type") != PROJECTOR:
        raise OllamaError(f"{mmproj}: not a {PROJECTOR} mmproj GGUF (minicpmv-gguf mmproj writes it)")
    template = str(lm_kind.kvs.get("tokenizer.chat_template", ""))
    if "<|im_start|>" not in template or "<think>" not in template:
        raise OllamaError(
            f"{lm}: tokenizer.chat_template is missing or not MiniCPM-V 4.6's ChatML template, "
            "which the Modelfile TEMPLATE reproduces"
        )
    license = lm_kind.kvs.get("general.license")
    if not license:
        log.warning("%s has no general.license: the Modelfile gets no LICENSE", lm)
    return str(license) if license else None


def _check_out(out: Path, inputs: list[Path], *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out}: already exists and is not empty (use --force to replace it)")
        if any(out.resolve() in p.resolve().parents for p in inputs):
            raise OutputError(f"{out}: holds the input GGUFs; replacing it would delete them (choose a new folder)")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"{out.parent}: output folder is not writable")


def _place(src: Path, dst: Path, link: bool) -> str:
    if not link:
        shutil.copyfile(src, dst)
        return "copied"
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError:  # another file system, or links not allowed there
        dst.symlink_to(src.resolve())
        return "symlinked"


def _move_into_place(tmp: Path, out: Path) -> None:
    """rename(2) replaces a missing or empty folder; a full one is moved aside first and removed after."""
    if not (out.is_dir() and any(out.iterdir())):
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old)
