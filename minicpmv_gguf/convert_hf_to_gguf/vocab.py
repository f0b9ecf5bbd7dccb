"""tokenizer.json + tokenizer_config.json + chat template -> the GGUF tokenizer keys (byte-level BPE).

No transformers or tokenizers import: the files are read as JSON. llama.cpp's `gpt2` tokenizer with
pre-tokenizer `qwen35` reproduces the Hugging Face tokenizer when the Split regex is Qwen3.5's.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import read_json
from ..errors import TokenizerError
from ..spec import END_OF_TEXT, IM_END, IM_START, IMAGE_PAD, LM_ARCH, VIDEO_PAD

log = logging.getLogger(__name__)

# The Qwen3.5 pre-tokenizer regex; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN35 uses the same one.
QWEN35_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Ids of the released MiniCPM-V 4.6 tokenizer (vocab_size 248094), used to recognise it.
RELEASED_IDS = {
    END_OF_TEXT: 248044,
    IM_START: 248045,
    IM_END: 248046,
    IMAGE_PAD: 248056,
    VIDEO_PAD: 248057,
}
RELEASED_VOCAB_SIZE = 248094
# Pieces libmtmd looks up by text to frame MiniCPM-V image embeddings.
MTMD_PIECES = ("<image>", "</image>", "<slice>", "</slice>")

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types
_LOOKS_SPECIAL = re.compile(r"^(<\|.*\|>|<｜.*｜>|<unused\d*>|<pad>|<mask>|<s>|</s>)$")


@dataclass(frozen=True)
class Vocab:
    """Everything the GGUF tokenizer section holds."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # "bos" | "eos" | "pad" | "unk" -> id
    add_bos: bool
    chat_template: str
    pre: str  # llama.cpp pre-tokenizer name
    recognised: str  # what the tokenizer was taken to be, for the log and summary


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def read_vocab(path: Path, vocab_size: int) -> Vocab:
    """Read a checkpoint's tokenizer into GGUF form, padded to vocab_size.

    Raises:
        TokenizerError: a file is missing or malformed, the tokenizer is not byte-level BPE, a token id
            does not fit the embedding, a special token is unknown, or there is no chat template.
    """
    tj_path, tc_path = path / "tokenizer.json", path / "tokenizer_config.json"
    tj, tc = _read(tj_path), _read(tc_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not _has_byte_level(tj):
        raise TokenizerError(f"{tj_path}: not a byte-level BPE tokenizer (model {model.get('type')!r})")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise TokenizerError(f"{tj_path}: model.vocab is not an object of token -> integer id")
    added = {}
    for t in tj.get("added_tokens") or []:
        if not (isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str)):
            raise TokenizerError(f"{tj_path}: malformed added_tokens entry {t!r} (needs an integer id and a content)")
        added[t["id"]] = t

    id_to_text: dict[int, str] = {i: s for s, i in vocab.items()}
    if len(id_to_text) != len(vocab):
        shared = next(i for i, n in Counter(vocab.values()).items() if n > 1)
        raise TokenizerError(f"{tj_path}: model.vocab gives id {shared} to several tokens")
    id_to_text.update({i: t["content"] for i, t in added.items()})
    if vocab_size > 2 * len(id_to_text) + 1024:  # mostly padding: not this model's tokenizer (or a huge config)
        raise TokenizerError(
            f"{tj_path}: {len(id_to_text)} tokens for an embedding of {vocab_size} rows "
            "(config vocab_size): the tokenizer does not belong to this model"
        )
    too_big = sorted(i for i in id_to_text if not 0 <= i < vocab_size)
    if too_big:
        raise TokenizerError(
            f"{tj_path}: token id {too_big[-1]} does not fit the embedding "
            f"(config vocab_size {vocab_size}; {len(too_big)} id(s) out of range)"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            text = added[i]["content"]
            special = added[i].get("special") or _LOOKS_SPECIAL.match(text)
            tokens.append(text if special else text.replace("\u2581", " "))
            types.append(CONTROL if special else USER_DEFINED)
        elif i in id_to_text:
            tokens.append(id_to_text[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)

    text_to_id = {t: i for i, t in id_to_text.items()}
    missing = [p for p in MTMD_PIECES if p not in text_to_id]
    if missing:
        log.warning(
            "%s: no %s token: libmtmd cannot frame image embeddings with this vocabulary", tj_path, ", ".join(missing)
        )
    special_ids = {}
    for kind in ("bos", "eos", "pad", "unk"):
        text = _token_text(tc.get(f"{kind}_token"))
        if text is None:
            continue
        if text not in text_to_id:
            if kind == "eos":
                raise TokenizerError(f"{tc_path}: eos_token {text!r} is not in the vocabulary")
            log.warning("%s: %s_token %r is not in the vocabulary; not written", tc_path, kind, text)
            continue
        special_ids[kind] = text_to_id[text]
    if "eos" not in special_ids:
        raise TokenizerError(f"{tc_path}: no eos_token")
    pre, recognised = _recognise(tj, text_to_id, vocab_size, tj_path)
    add_bos = tc.get("add_bos_token")
    return Vocab(
        tokens,
        types,
        _merges(model.get("merges"), vocab, tj_path),
        special_ids,
        add_bos if isinstance(add_bos, bool) else False,
        read_chat_template(path, tc),
        pre,
        recognised,
    )


def _read(p: Path) -> dict[str, Any]:
    data = read_json(p)
    if not isinstance(data, dict):
        raise TokenizerError(f"{p}: not a JSON object")
    return data


def _has_byte_level(tj: dict[str, Any]) -> bool:
    def kinds(node: Any) -> set[str]:
        if not isinstance(node, dict):
            return set()
        return {node.get("type")} | {k for child in node.get("pretokenizers") or [] for k in kinds(child)}

    return "ByteLevel" in kinds(tj.get("pre_tokenizer")) | kinds(tj.get("decoder"))


def _split_regex(tj: dict[str, Any]) -> str | None:
    node = tj.get("pre_tokenizer") or {}
    for child in [node, *(node.get("pretokenizers") or [])]:
        if isinstance(child, dict) and child.get("type") == "Split":
            return (child.get("pattern") or {}).get("Regex")
    return None


def _recognise(tj: dict[str, Any], text_to_id: dict[str, int], vocab_size: int, where: Path) -> tuple[str, str]:
    if _split_regex(tj) != QWEN35_REGEX:
        log.warning(
            "%s: pre-tokenizer is not Qwen3.5's; assuming llama.cpp pre-tokenizer %r "
            "(token ids may differ from Hugging Face's)",
            where,
            LM_ARCH,
        )
        return LM_ARCH, "unknown byte-level BPE, assumed Qwen3.5 pre-tokenizer"
    if vocab_size == RELEASED_VOCAB_SIZE and all(text_to_id.get(t) == i for t, i in RELEASED_IDS.items()):
        return LM_ARCH, "the released MiniCPM-V 4.6 tokenizer"
    return LM_ARCH, "byte-level BPE with the Qwen3.5 pre-tokenizer"


def _merges(raw: Any, vocab: dict[str, int], where: Path) -> list[str]:
    """The merges as llama.cpp reads them; each must join two vocabulary tokens into a third, as the
    Hugging Face tokenizers library requires when it loads the file."""
    if not isinstance(raw, list):
        raise TokenizerError(f"{where}: model.merges is missing")
    pairs = [m.split(" ") if type(m) is str else m for m in raw]
    bad = [m for m, p in zip(raw, pairs) if not (type(p) is list and len(p) == 2 and type(p[0]) is type(p[1]) is str)]
    if bad:
        raise TokenizerError(f"{where}: malformed merge {bad[0]!r}")
    unknown = [(a, b) for a, b in pairs if a not in vocab or b not in vocab or a + b not in vocab]
    if unknown:
        a, b = unknown[0]
        name = next(t for t in (a, b, a + b) if t not in vocab)
        raise TokenizerError(
            f"{where}: merge {a!r} + {b!r} names {name!r}, which is not in model.vocab ({len(unknown)} such merge(s))"
        )
    # llama.cpp splits merges on ' ': a literal space in a part is stored as its byte-level 'Ġ'.
    return [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m) for m in raw]


def read_chat_template(path: Path, tokenizer_config: dict[str, Any]) -> str:
    """chat_template.jinja if present, else tokenizer_config.json's chat_template."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        raise TokenizerError(
            f"{path}: no chat template (chat_template.jinja or tokenizer_config.json); "
            "llama-cpp-python's multimodal chat handler needs one"
        )
    return template
