"""general.* keys shared by the LM and mmproj GGUFs: what the file is, where it came from, which tool wrote it."""

from __future__ import annotations

import re
from pathlib import Path

from gguf import GGUFValueType as T

from . import __version__
from .checkpoint import Checkpoint, read_json
from .gguf_io import KV

# generation_config.json -> general.sampling.* (llama.cpp's tools take them as sampling defaults).
SAMPLING_KEYS = {
    "temperature": ("general.sampling.temp", T.FLOAT32),
    "top_k": ("general.sampling.top_k", T.INT32),
    "top_p": ("general.sampling.top_p", T.FLOAT32),
    "repetition_penalty": ("general.sampling.penalty_repeat", T.FLOAT32),
}


def general_kvs(
    ckpt: Checkpoint, *, file_type: int, gguf_type: str, name: str | None = None, source_url: str | None = None
) -> list[KV]:
    """general.* rows. `gguf_type` is "model" (LM GGUF) or "mmproj"."""
    rows = [
        KV("general.type", gguf_type, T.STRING),
        KV("general.name", name or ckpt.path.resolve().name, T.STRING),
        KV("general.file_type", file_type, T.UINT32),
        KV("general.quantization_version", 2, T.UINT32),
        KV("general.converter", f"minicpmv-gguf {__version__}", T.STRING),
    ]
    license = model_card_license(ckpt.path)
    if license:
        rows.append(KV("general.license", license, T.STRING))
    source_url = source_url or _hub_url(ckpt)
    if source_url:
        rows.append(KV("general.source.url", source_url, T.STRING))
    return rows


def sampling_kvs(ckpt: Checkpoint) -> list[KV]:
    """The checkpoint's own sampling defaults, when generation_config.json samples."""
    path = ckpt.path / "generation_config.json"
    gen = read_json(path) if path.is_file() else {}
    if not isinstance(gen, dict) or not gen.get("do_sample"):
        return []
    return [
        KV(key, int(gen[hf]) if kind is T.INT32 else float(gen[hf]), kind)
        for hf, (key, kind) in SAMPLING_KEYS.items()
        if type(gen.get(hf)) in (int, float)
    ]


def model_card_license(path: Path) -> str | None:
    """The `license:` of the model card's YAML front matter, if any."""
    card = path / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    lic = m and re.search(r"^license:\s*['\"]?([\w.+-]+)", m.group(1), re.M)
    return lic.group(1) if lic else None


def _hub_url(ckpt: Checkpoint) -> str | None:
    repo = ckpt.config.get("_name_or_path")
    if isinstance(repo, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        return f"https://huggingface.co/{repo}"
    return None
